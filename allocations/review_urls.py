from django.urls import path

from allocations import views

app_name = "review"
urlpatterns = [
    # Placeholder until the review queue exists, so the nav link resolves.
    path("", views.home, name="queue"),
]
