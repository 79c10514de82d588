"""The one API router: every viewset is registered here, so this file is the API's index."""

from rest_framework.routers import DefaultRouter

from allocations import api as allocations_api

router = DefaultRouter()
router.register("allocations", allocations_api.AllocationViewSet, basename="allocation")
router.register("admission", allocations_api.AdmissionViewSet, basename="admission")
router.register("holds", allocations_api.HoldViewSet, basename="hold")
router.register("refunds", allocations_api.RefundViewSet, basename="refund")
router.register("usage", allocations_api.UsageViewSet, basename="usage")
router.register("imports", allocations_api.UsageImportViewSet, basename="usageimport")
router.register("clusters", allocations_api.ClusterViewSet, basename="cluster")
