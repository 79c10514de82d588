from django.urls import path

from allocations import review_views as views

app_name = "review"
urlpatterns = [
    path("", views.queue, name="queue"),
    path("approve/", views.approve_several, name="approve-several"),
    path("requests/<uuid:code>/", views.request_detail, name="request"),
    path("allocations/<uuid:code>/", views.allocation_detail, name="allocation"),
    path(
        "allocations/<uuid:code>/<str:action>/", views.allocation_status, name="allocation-status"
    ),
    path("projects/<uuid:code>/<str:action>/", views.project_status, name="project-status"),
    path("members/<uuid:code>/<str:action>/", views.member_status, name="member-status"),
    path("clusters/<uuid:code>/", views.cluster_detail, name="cluster"),
    path("clusters/<uuid:code>/rates/", views.rates, name="rates"),
    path("clusters/<uuid:code>/capacity/", views.capacity, name="capacity"),
    path("rates/<uuid:code>/close/", views.rate_close, name="rate-close"),
]
