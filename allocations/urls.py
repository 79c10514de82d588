from django.urls import include, path

from allocations import views

app_name = "allocations"
urlpatterns = [
    path("", views.home, name="home"),
    path("review/", include("allocations.review_urls")),
]
