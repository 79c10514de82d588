from django.urls import path

from allocations import views

app_name = "allocations"
urlpatterns = [
    path("", views.home, name="home"),
]
