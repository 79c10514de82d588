"""The one API router: every viewset is registered here, so this file is the API's index."""

from rest_framework.routers import DefaultRouter

from allocations import analytics_api
from allocations import api as allocations_api

router = DefaultRouter()
router.register("allocations", allocations_api.AllocationViewSet, basename="allocation")
router.register("admission", allocations_api.AdmissionViewSet, basename="admission")
router.register("holds", allocations_api.HoldViewSet, basename="hold")
router.register("refunds", allocations_api.RefundViewSet, basename="refund")
router.register("usage", allocations_api.UsageViewSet, basename="usage")
router.register("imports", allocations_api.UsageImportViewSet, basename="usageimport")
router.register("clusters", allocations_api.ClusterViewSet, basename="cluster")
# Chart data: detail routes only (allocations/{code}/charts/..., projects/{code}/charts/...,
# clusters/{name}/charts/...), beside whatever lists those prefixes have.
router.register("allocations", analytics_api.AllocationChartViewSet, basename="allocation-chart")
router.register("projects", analytics_api.ProjectChartViewSet, basename="project-chart")
router.register("clusters", analytics_api.ClusterChartViewSet, basename="cluster-chart")
