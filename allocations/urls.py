from django.urls import include, path

from allocations import views

app_name = "allocations"
urlpatterns = [
    path("", views.home, name="home"),
    path("allocations/request/", views.allocation_request_new, name="allocation-request"),
    path("allocations/<uuid:code>/", views.allocation_detail, name="allocation"),
    path("allocations/<uuid:code>/jobs/", views.allocation_jobs, name="jobs"),
    path("allocations/<uuid:code>/history/", views.allocation_history, name="history"),
    path("allocations/<uuid:code>/requests/", views.allocation_requests, name="requests"),
    path("allocations/<uuid:code>/requests/new/", views.change_request_new, name="change-request"),
    path("allocations/<uuid:code>/members/", views.allocation_members, name="members"),
    path("allocations/<uuid:code>/members/add/", views.member_add, name="member-add"),
    path("members/<uuid:code>/cap/", views.member_cap, name="member-cap"),
    path("members/<uuid:code>/status/", views.member_status, name="member-status"),
    path("requests/<uuid:code>/comment/", views.request_comment, name="request-comment"),
    path("requests/<uuid:code>/cancel/", views.request_cancel, name="request-cancel"),
    path("projects/<uuid:code>/", views.project_detail, name="project"),
    path(
        "projects/<uuid:code>/managers/add/",
        views.project_manager_add,
        name="project-manager-add",
    ),
    path(
        "projects/<uuid:code>/managers/remove/",
        views.project_manager_remove,
        name="project-manager-remove",
    ),
    path("review/", include("allocations.review_urls")),
]
