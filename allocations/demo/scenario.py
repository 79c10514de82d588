"""The demo site's cast and story, as data.

Every time is relative to the anchor (midnight UTC of `load_demo --today`): `at(-83, 14)`
is 14:00 on the day 83 days before it. The shipped trace slice covers SPAN_DAYS days and
is shifted to end at the anchor, so allocations that start at START cover all of it.
SU amounts are shares of what plan.py finds each allocation will have used.
"""

import datetime as dt
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from allocations.conversion import SU_PLACES

SPAN_DAYS = 184
START = -SPAN_DAYS
RATES_FROM = START - 30
RATE_CHANGE = START + SPAN_DAYS // 2
# Announced two weeks ahead, as providers do.
RATE_CHANGE_ANNOUNCED = RATE_CHANGE - 14

DEMO_PASSWORD = "demo-password"  # noqa: S105 (printed by the command: it is a demo)
ADMIN_PASSWORD = "demo-admin-password"  # noqa: S105


def at(day: int, hour: int = 0, minute: int = 0) -> dt.timedelta:
    return dt.timedelta(days=day, hours=hour, minutes=minute)


def nice(amount: Decimal) -> Decimal:
    """Three significant figures, as people write budgets (21,347 -> 21,300)."""
    if amount <= 0:
        return Decimal(0)
    exponent = max(amount.adjusted() - 2, -SU_PLACES)
    rounded = amount.quantize(Decimal(1).scaleb(exponent), rounding=ROUND_HALF_UP)
    return rounded.quantize(Decimal(1)) if exponent >= 0 else rounded


# --- the cast ----------------------------------------------------------------------


@dataclass(frozen=True)
class Org:
    key: str
    name: str
    # Reserved .example domains: the demo must never e-mail a real address.
    domain: str


@dataclass(frozen=True)
class Person:
    username: str
    first: str
    last: str
    org: str

    def email(self, domain: str) -> str:
        last = "".join(c for c in self.last.lower() if c.isalpha())
        return f"{self.first.lower()}.{last}@{domain}"


ORGS = (
    Org("northfield", "Northfield University", "northfield.example"),
    Org("lakeshore", "Lakeshore Institute of Technology", "lakeshore-tech.example"),
    Org("cascadia", "Cascadia Marine Research Laboratory", "cascadia-lab.example"),
)

ADMIN = Person("admin", "Portal", "Administrator", "northfield")

PEOPLE = (
    # Northfield Research Computing runs both clusters.
    Person("praman", "Priya", "Raman", "northfield"),
    Person("tbecker", "Tom", "Becker", "northfield"),
    Person("lnovak", "Lena", "Novak", "northfield"),
    Person("mchen", "Maria", "Chen", "northfield"),
    Person("jpark", "Jun", "Park", "northfield"),
    Person("salvarez", "Sofia", "Alvarez", "northfield"),
    Person("gliu", "Grace", "Liu", "northfield"),
    Person("riyer", "Ravi", "Iyer", "northfield"),
    Person("sokafor", "Samuel", "Okafor", "northfield"),
    Person("hweiss", "Hannah", "Weiss", "northfield"),
    Person("ebrooks", "Ethan", "Brooks", "northfield"),
    Person("ohaddad", "Omar", "Haddad", "northfield"),
    Person("dkowalski", "David", "Kowalski", "lakeshore"),
    Person("ydemir", "Yusuf", "Demir", "lakeshore"),
    Person("lmoreau", "Lucas", "Moreau", "lakeshore"),
    Person("mtanaka", "Mei", "Tanaka", "lakeshore"),
    Person("icosta", "Isabel", "Costa", "lakeshore"),
    Person("arahman", "Aisha", "Rahman", "lakeshore"),
    Person("fbenali", "Fatima", "Benali", "lakeshore"),
    Person("nfischer", "Noah", "Fischer", "lakeshore"),
    Person("kobrien", "Kevin", "O'Brien", "lakeshore"),
    Person("epetrova", "Elena", "Petrova", "cascadia"),
    Person("amehta", "Arjun", "Mehta", "cascadia"),
    Person("cdubois", "Chloe", "Dubois", "cascadia"),
    Person("bcarter", "Ben", "Carter", "cascadia"),
    Person("mwebb", "Marcus", "Webb", "cascadia"),
    Person("dschwartz", "Daniel", "Schwartz", "cascadia"),
    Person("znguyen", "Zoe", "Nguyen", "cascadia"),
    Person("lkarimi", "Leila", "Karimi", "cascadia"),
)

SAMPLE_PI = "mchen"
SAMPLE_CLUSTER_ADMIN = "praman"


@dataclass(frozen=True)
class ResourceSpec:
    name: str
    kind: str
    unit: str
    amount: int
    rate: Decimal  # SU per unit-hour from RATES_FROM
    rate_after: Decimal  # ... and from RATE_CHANGE
    why_changed: str = ""


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    title: str
    description: str
    su_capacity_per_month: Decimal
    admins: tuple[str, ...]
    resources: tuple[ResourceSpec, ...]


CLUSTERS = (
    ClusterSpec(
        name="granite",
        title="Granite CPU cluster",
        description="1,024 cores for MPI and throughput work; 4 GB of memory per core.",
        # 1,024 cores x 730 hours x 0.01 SU: what a month of the whole machine is worth.
        su_capacity_per_month=Decimal(7500),
        admins=("praman", "lnovak"),
        resources=(
            ResourceSpec(
                "CPU",
                "CPU",
                "core",
                1024,
                Decimal("0.01"),
                Decimal("0.008"),
                "New power contract: CPU time costs the centre 20% less.",
            ),
        ),
    ),
    ClusterSpec(
        name="ember",
        title="Ember GPU cluster",
        description="One H200 node and two RTX 6000 nodes (8 GPUs each) for AI and "
        "accelerated codes.",
        # 8 H200 x 730 hours x 2.5 SU + 16 RTX 6000 x 730 hours x 0.5 SU.
        su_capacity_per_month=Decimal(20000),
        admins=("tbecker", "lnovak"),
        resources=(
            ResourceSpec(
                "GPU H200",
                "GPU",
                "GPU",
                8,
                Decimal(2),
                Decimal("2.5"),
                "H200 demand is well above supply; the rate now reflects it.",
            ),
            ResourceSpec("GPU RTX6000", "GPU", "GPU", 16, Decimal("0.5"), Decimal("0.5")),
        ),
    ),
)


@dataclass(frozen=True)
class ProjectSpec:
    key: str
    title: str
    pi: str
    created: dt.timedelta
    description: str
    origination: str = "LOCAL"
    originated_id: str = ""
    managers: tuple[str, ...] = ()

    @property
    def imported(self) -> bool:
        # ACCESS and NAIRR projects arrive from the central service: staff create them.
        return self.origination != "LOCAL"


PROJECTS = (
    ProjectSpec(
        "chen",
        "Free energies of protein-ligand binding",
        "mchen",
        at(-220, 10),
        "Alchemical free-energy calculations for fragment-based drug design.",
        managers=("jpark",),
    ),
    ProjectSpec(
        "okafor",
        "Regional climate downscaling for the Pacific Northwest",
        "sokafor",
        at(-218, 9),
        "Dynamical downscaling of CMIP6 scenarios to 4 km for water-resource planning.",
        "ACCESS",
        "ATM250311",
        managers=("hweiss",),
    ),
    ProjectSpec(
        "kowalski",
        "Open foundation models for scientific text",
        "dkowalski",
        at(-216, 11),
        "Pre-training and evaluating 1B-7B parameter language models on open-access papers.",
        "NAIRR",
        "NAIRR250187",
        managers=("ydemir",),
    ),
    ProjectSpec(
        "rahman",
        "High-throughput screening of battery cathode materials",
        "arahman",
        at(-215, 15),
        "DFT screening of layered oxide cathodes, with ML surrogates trained on the results.",
        "ACCESS",
        "DMR250452",
        managers=("fbenali",),
    ),
    ProjectSpec(
        "salmon",
        "Population genomics of Pacific salmon",
        "epetrova",
        at(-212, 10),
        "Variant calling and demographic inference across 1,400 resequenced genomes.",
        managers=("amehta",),
    ),
    ProjectSpec(
        "webb",
        "Galaxy formation in cosmological simulations",
        "mwebb",
        at(-210, 16),
        "Zoom-in hydrodynamical simulations of Milky Way analogues.",
        "ACCESS",
        "AST250098",
        managers=("dschwartz",),
    ),
    ProjectSpec(
        "teaching",
        "Course: Parallel Programming",
        "riyer",
        at(-205, 9),
        "Class allocation for MPI and OpenMP assignments.",
    ),
    ProjectSpec(
        "karimi",
        "Tsunami inundation hazard maps",
        "lkarimi",
        at(-200, 13),
        "High-resolution inundation scenarios for coastal communities.",
        "ACCESS",
        "EAR250017",
    ),
    ProjectSpec(
        "annotation",
        "Deep learning for genome annotation",
        "epetrova",
        at(-170, 10),
        "Training gene-model predictors on salmonid genomes.",
        "NAIRR",
        "NAIRR250233",
        managers=("cdubois",),
    ),
    ProjectSpec(
        "moreau",
        "Self-supervised learning for microscopy images",
        "lmoreau",
        at(-10, 11),
        "Pre-training vision transformers on unlabelled electron-microscopy data.",
        "NAIRR",
        "NAIRR260041",
    ),
)


# --- the story of each allocation -----------------------------------------------------


@dataclass(frozen=True)
class Comment:
    when: dt.timedelta
    by: str
    text: str


@dataclass(frozen=True)
class RequestSpec:
    """A change request. SU amounts are shares of the allocation's final budget, so they
    scale with the usage the plan finds; `su` is a fixed amount instead."""

    when: dt.timedelta
    by: str
    justification: str
    share: Decimal | None = None  # SUs asked for
    su: Decimal | None = None
    extend_days: int | None = None  # a new end this many days after the current one
    status: str = ""
    priority: int = 2  # ChangeRequest.Priority.NORMAL
    comments: tuple[Comment, ...] = ()
    decision: str = "PENDING"  # or APPROVED, REJECTED, CANCELLED
    decided: dt.timedelta | None = None
    decided_by: str = ""
    granted: Decimal | None = None  # share granted, when it differs from the ask
    reason: str = ""


@dataclass(frozen=True)
class MemberSpec:
    username: str
    # The share of their cap the member has used at the anchor (above 1: over the cap).
    cap_used: Decimal | None = None
    cap_raised: dt.timedelta | None = None  # starts at 60% of the final cap until then
    frozen: dt.timedelta | None = None
    why_frozen: str = ""


@dataclass(frozen=True)
class AllocationSpec:
    name: str  # the Slurm account
    project: str
    cluster: str
    resources: tuple[str, ...]
    start: int
    end: int
    new: RequestSpec  # the request that created it; its ask defaults to what it is granted
    used: Decimal | None  # share of the final budget used at the anchor
    members: tuple[MemberSpec, ...] = ()
    requests: tuple[RequestSpec, ...] = ()
    frozen: tuple[dt.timedelta, str, str] | None = None  # when, by, why
    closed: dt.timedelta | None = None  # closed by the expiry job

    @property
    def members_added(self) -> dt.timedelta | None:
        return None if self.new.decided is None else self.new.decided + at(0, 1)

    @property
    def inactive_from(self) -> dt.timedelta | None:
        times = [t for t in (self.frozen and self.frozen[0], self.closed) if t is not None]
        return min(times) if times else None


D = Decimal

ALLOCATIONS = (
    AllocationSpec(
        "chen-cpu",
        "chen",
        "granite",
        ("CPU",),
        START,
        180,
        RequestSpec(
            at(-198, 10),
            "mchen",
            "Equilibration and replica-exchange runs for 40 ligands.",
            decision="APPROVED",
            decided=at(-192, 15),
            decided_by="praman",
        ),
        used=D("0.55"),
        members=(
            MemberSpec("jpark"),
            MemberSpec("salvarez"),
            MemberSpec("gliu", cap_used=D("1.05")),
            MemberSpec("riyer"),
        ),
        requests=(
            RequestSpec(
                at(-64, 9),
                "jpark",
                "Twenty more ligands from the second fragment screen.",
                share=D("0.3"),
                comments=(
                    Comment(
                        at(-63, 11),
                        "praman",
                        "Fine by us. The lower CPU rate since the rate change stretches this "
                        "further than your estimate assumes.",
                    ),
                ),
                decision="APPROVED",
                decided=at(-62, 16),
                decided_by="lnovak",
            ),
        ),
    ),
    AllocationSpec(
        "chen-gpu",
        "chen",
        "ember",
        ("GPU RTX6000",),
        START,
        180,
        RequestSpec(
            at(-198, 10, 30),
            "mchen",
            "GPU-accelerated molecular dynamics (OpenMM) for the same ligand set.",
            decision="APPROVED",
            decided=at(-191, 11),
            decided_by="tbecker",
        ),
        used=D("0.62"),
        members=(MemberSpec("jpark"), MemberSpec("salvarez", cap_used=D("0.7"))),
    ),
    AllocationSpec(
        "okafor-cpu",
        "okafor",
        "granite",
        ("CPU",),
        START,
        180,
        RequestSpec(
            at(-197, 14),
            "hweiss",
            "Ensemble of 12 downscaled scenarios, 30 years each.",
            share=D("1.5"),
            decision="APPROVED",
            decided=at(-190, 10),
            decided_by="praman",
            reason="Granite is heavily committed this half-year: granted two thirds of the "
            "request. Ask for a supplement if the ensemble needs it.",
        ),
        used=D("0.68"),
        members=(
            MemberSpec("hweiss"),
            MemberSpec("ebrooks"),
            MemberSpec("ohaddad", cap_used=D("0.75")),
        ),
    ),
    AllocationSpec(
        "kowalski-gpu",
        "kowalski",
        "ember",
        ("GPU H200", "GPU RTX6000"),
        START,
        180,
        RequestSpec(
            at(-199, 16),
            "dkowalski",
            "Pre-training a 1B model and ablations (NAIRR Pilot award).",
            priority=3,
            decision="APPROVED",
            decided=at(-192, 10),
            decided_by="tbecker",
        ),
        used=D("0.95"),
        members=(
            MemberSpec("ydemir"),
            MemberSpec("lmoreau"),
            MemberSpec("mtanaka", cap_used=D("0.85")),
            MemberSpec("icosta", cap_used=D("0.6")),
        ),
        requests=(
            RequestSpec(
                at(-84, 10),
                "ydemir",
                "Scaling study for the 7B model before the conference deadline.",
                share=D("0.3"),
                priority=3,
                comments=(
                    Comment(
                        at(-83, 10),
                        "tbecker",
                        "Note that H200 time costs 2.5 SU per GPU-hour since the rate change; "
                        "please check your GPU-hour estimate against it.",
                    ),
                    Comment(
                        at(-83, 15),
                        "ydemir",
                        "Checked: the same SUs buy about 20% fewer H200 hours. We will move the "
                        "ablations to RTX6000.",
                    ),
                ),
                decision="APPROVED",
                decided=at(-82, 9),
                decided_by="tbecker",
            ),
        ),
    ),
    AllocationSpec(
        "rahman-cpu",
        "rahman",
        "granite",
        ("CPU",),
        START,
        180,
        RequestSpec(
            at(-196, 11),
            "arahman",
            "DFT relaxations of 8,000 candidate cathode compositions.",
            decision="APPROVED",
            decided=at(-190, 14),
            decided_by="lnovak",
        ),
        used=D("1.12"),
        members=(
            MemberSpec("fbenali"),
            MemberSpec("nfischer", cap_used=D("0.9"), cap_raised=at(-98, 10)),
            MemberSpec("kobrien"),
        ),
        requests=(
            RequestSpec(
                at(-101, 9),
                "fbenali",
                "The screening found twice as many stable candidates as expected; phonon "
                "calculations for them.",
                share=D("0.6"),
                decision="APPROVED",
                decided=at(-99, 16),
                decided_by="praman",
                granted=D("0.4"),
                reason="Granted two thirds: the rest of this half-year's capacity is committed. "
                "Ask again with the usage of the current campaign.",
            ),
            RequestSpec(
                at(-5, 8),
                "arahman",
                "The allocation is overdrawn and our jobs are refused; the phonon campaign "
                "needs about six more weeks.",
                share=D("0.5"),
                priority=4,
                comments=(
                    Comment(
                        at(-4, 10),
                        "praman",
                        "Confirmed: rahman-cpu is overdrawn. It goes to Friday's allocation "
                        "committee with high priority.",
                    ),
                    Comment(
                        at(-4, 12), "arahman", "Thank you. Usage logs are attached to the ticket."
                    ),
                ),
            ),
        ),
    ),
    AllocationSpec(
        "rahman-gpu",
        "rahman",
        "ember",
        ("GPU RTX6000",),
        START,
        -1,
        RequestSpec(
            at(-196, 11, 30),
            "arahman",
            "Training graph-network surrogates on the DFT results.",
            decision="APPROVED",
            decided=at(-189, 10),
            decided_by="tbecker",
        ),
        used=D("0.45"),
        members=(MemberSpec("nfischer"), MemberSpec("kobrien", cap_used=D("0.5"))),
        requests=(
            RequestSpec(
                at(-40, 14),
                "arahman",
                "Extend to the end of the CPU allocation so both run out together.",
                extend_days=181,
                decision="APPROVED",
                decided=at(-35, 11),
                decided_by="tbecker",
                reason="Extended to match rahman-cpu.",
            ),
        ),
    ),
    AllocationSpec(
        "petrova-cpu",
        "salmon",
        "granite",
        ("CPU",),
        START,
        180,
        RequestSpec(
            at(-195, 9),
            "epetrova",
            "Alignment and joint genotyping of 1,400 genomes.",
            decision="APPROVED",
            decided=at(-189, 15),
            decided_by="praman",
        ),
        used=D("0.5"),
        members=(
            MemberSpec("amehta"),
            MemberSpec("cdubois"),
            MemberSpec("bcarter", frozen=at(-40, 17), why_frozen="Internship ended."),
        ),
        requests=(
            RequestSpec(
                at(-120, 10),
                "amehta",
                "Re-running variant calling with a finer window.",
                share=D("0.25"),
                comments=(
                    Comment(
                        at(-119, 9),
                        "epetrova",
                        "Hold on: the slowdown was a misconfigured thread count, we may not "
                        "need this.",
                    ),
                ),
                decision="CANCELLED",
                decided=at(-118, 11),
                decided_by="amehta",
                reason="Fixed the thread count; the budget we have is enough.",
            ),
        ),
    ),
    AllocationSpec(
        "petrova-gpu",
        "annotation",
        "ember",
        ("GPU H200",),
        START + 30,
        210,
        RequestSpec(
            at(-165, 10),
            "epetrova",
            "Training a gene-model predictor (NAIRR Pilot award).",
            decision="APPROVED",
            decided=at(-160, 14),
            decided_by="tbecker",
        ),
        used=D("0.7"),
        members=(MemberSpec("cdubois"), MemberSpec("amehta", cap_used=D("0.8"))),
        requests=(
            RequestSpec(
                at(-44, 10),
                "cdubois",
                "Train the annotation model on all twelve salmonid genomes.",
                share=D("0.5"),
                decision="REJECTED",
                decided=at(-41, 15),
                decided_by="lnovak",
                reason="H200 capacity for the rest of this half-year is committed. Please use "
                "RTX6000 for the ablations, or ask again next cycle.",
            ),
        ),
    ),
    AllocationSpec(
        "webb-cpu",
        "webb",
        "granite",
        ("CPU",),
        START,
        12,  # expires soon
        RequestSpec(
            at(-194, 13),
            "mwebb",
            "Six zoom-in simulations to z=0 at two resolutions.",
            decision="APPROVED",
            decided=at(-188, 10),
            decided_by="praman",
        ),
        used=D("0.82"),
        members=(MemberSpec("dschwartz"), MemberSpec("znguyen"), MemberSpec("lkarimi")),
        requests=(
            RequestSpec(
                at(-9, 11),
                "dschwartz",
                "The last high-resolution run finishes in about three months.",
                extend_days=183,
                comments=(
                    Comment(
                        at(-8, 9),
                        "lnovak",
                        "Fine by us; we need ACCESS to confirm the renewal before approving.",
                    ),
                ),
            ),
        ),
    ),
    AllocationSpec(
        "iyer-teach",
        "teaching",
        "granite",
        ("CPU",),
        START,
        -60,
        RequestSpec(
            at(-200, 10),
            "riyer",
            "Thirty students, four MPI assignments and a final project.",
            decision="APPROVED",
            decided=at(-193, 9),
            decided_by="praman",
        ),
        used=D("0.85"),
        members=(
            MemberSpec("gliu", cap_used=D("0.9")),
            MemberSpec("ohaddad", cap_used=D("0.9")),
            MemberSpec("salvarez", cap_used=D("0.9")),
        ),
        requests=(
            RequestSpec(
                at(-70, 10),
                "riyer",
                "Two students need a month more to finish their final projects.",
                extend_days=30,
                decision="REJECTED",
                decided=at(-67, 14),
                decided_by="praman",
                reason="Course allocations end with the term; the students can use their "
                "research groups' allocations.",
            ),
        ),
        closed=at(-59, 1),
    ),
    AllocationSpec(
        "karimi-cpu",
        "karimi",
        "granite",
        ("CPU",),
        START,
        180,
        RequestSpec(
            at(-193, 15),
            "lkarimi",
            "Inundation scenarios for 14 coastal towns.",
            decision="APPROVED",
            decided=at(-187, 10),
            decided_by="lnovak",
        ),
        used=D("0.6"),
        members=(MemberSpec("znguyen"),),
        requests=(
            RequestSpec(
                at(-3, 10),
                "lkarimi",
                "The progress report went to ACCESS yesterday; please reactivate.",
                status="ACTIVE",
                comments=(
                    Comment(
                        at(-2, 14),
                        "praman",
                        "Received, thanks. We will confirm with ACCESS and reactivate.",
                    ),
                ),
            ),
        ),
        frozen=(
            at(-25, 9),
            "praman",
            "The annual progress report to ACCESS is overdue; unfrozen when it arrives.",
        ),
    ),
    AllocationSpec(
        "moreau-gpu",
        "moreau",
        "ember",
        ("GPU H200", "GPU RTX6000"),
        7,
        372,
        RequestSpec(
            at(-6, 10),
            "lmoreau",
            "Pre-training ViT-L on 40 TB of unlabelled micrographs (NAIRR Pilot award).",
            su=D(8000),
            comments=(
                Comment(
                    at(-2, 11),
                    "tbecker",
                    "Could you tell us the expected split between H200 and RTX6000?",
                ),
                Comment(
                    at(-1, 9),
                    "lmoreau",
                    "Mostly H200 for pre-training (about 3,000 GPU-hours); fine-tuning fits "
                    "on RTX6000.",
                ),
            ),
        ),
        used=None,
    ),
)
