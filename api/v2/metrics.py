"""SESv2 BatchGetMetricData: daily counts of an account's events, as VDM reports them.

Counts come from the events table, one point per UTC day from StartDate to EndDate.
Sesame tracks no opens or clicks, so those metrics are always zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter
from psycopg import AsyncConnection
from pydantic import Field

from api.v2.auth import CallerDep, V2Route, bad_request
from api.v2.models import MAX_EPOCH, SesModel, epoch, from_epoch
from mta import identities
from mta.identities import IdentityError

router = APIRouter(route_class=V2Route, tags=["Metrics"])

# Bounds the work of one query: a year of daily points.
MAX_DAYS = 366

Metric = Literal[
    "SEND",
    "COMPLAINT",
    "PERMANENT_BOUNCE",
    "TRANSIENT_BOUNCE",
    "OPEN",
    "CLICK",
    "DELIVERY",
    "DELIVERY_OPEN",
    "DELIVERY_CLICK",
    "DELIVERY_COMPLAINT",
]
Dimension = Literal["EMAIL_IDENTITY", "CONFIGURATION_SET", "ISP", "TENANT_NAME"]

# What each metric counts in events; None: never recorded, always zero.
_COUNTS: dict[str, tuple[str, str] | None] = {
    "SEND": (
        "sum(coalesce((e.detail->>'recipients')::bigint, 1))",
        "e.event_type = 'send'",
    ),
    "DELIVERY": ("count(*)", "e.event_type = 'delivery'"),
    "PERMANENT_BOUNCE": (
        "count(*)",
        "e.event_type = 'bounce' and e.bounce_type = 'Permanent'",
    ),
    "TRANSIENT_BOUNCE": (
        "count(*)",
        "e.event_type = 'bounce' and e.bounce_type = 'Transient'",
    ),
    "COMPLAINT": ("count(*)", "e.event_type = 'complaint'"),
    # Every complaint is about a delivered message.
    "DELIVERY_COMPLAINT": ("count(*)", "e.event_type = 'complaint'"),
    "OPEN": None,
    "CLICK": None,
    "DELIVERY_OPEN": None,
    "DELIVERY_CLICK": None,
}


class BatchGetMetricDataQuery(SesModel):
    """One metric over a time range, optionally narrowed by dimensions."""

    id: str = Field(min_length=1, max_length=255, description="Names the result.")
    namespace: Literal["VDM"] = Field(description="Always VDM.")
    metric: Metric = Field(description="What to count.")
    dimensions: Annotated[
        dict[Dimension, str] | None,
        Field(
            min_length=1,
            max_length=3,
            description="EMAIL_IDENTITY (From address or domain) or CONFIGURATION_SET.",
        ),
    ] = None
    start_date: float = Field(
        ge=0, le=MAX_EPOCH, description="Start of the range (epoch seconds)."
    )
    end_date: float = Field(
        ge=0, le=MAX_EPOCH, description="End of the range, exclusive (epoch seconds)."
    )


class BatchGetMetricDataRequest(SesModel):
    """Up to ten metric queries."""

    queries: list[BatchGetMetricDataQuery] = Field(
        min_length=1, max_length=10, description="The queries."
    )


class MetricDataResult(SesModel):
    """Daily values of one query."""

    id: str = Field(description="The query's Id.")
    timestamps: list[float] = Field(description="Start of each UTC day (epoch).")
    values: list[int] = Field(description="The count of each day.")


class MetricDataError(SesModel):
    """A query that could not be answered."""

    id: str = Field(description="The query's Id.")
    code: Literal["INTERNAL_FAILURE", "ACCESS_DENIED"] = Field(description="Why.")
    message: str = Field(description="What went wrong.")


class BatchGetMetricDataResponse(SesModel):
    """Results of the queries, in their order."""

    results: list[MetricDataResult] = Field(description="One per query answered.")
    errors: list[MetricDataError] = Field(description="One per query that failed.")


@dataclass(slots=True)
class _Plan:
    """A checked query: the days it reports and the SQL filters of its events."""

    metric: str
    days: list[datetime]
    where: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)
    join_messages: bool = False


@router.post(
    "/metrics/batch",
    name="BatchGetMetricData",
    operation_id="BatchGetMetricData",
    response_model=BatchGetMetricDataResponse,
)
async def batch_get_metric_data(
    body: BatchGetMetricDataRequest, call: CallerDep
) -> BatchGetMetricDataResponse:
    """Count the account's events per UTC day for each query."""
    plans = [_plan(query) for query in body.queries]
    results = []
    async with call.runtime.pool.connection() as conn:
        for query, plan in zip(body.queries, plans, strict=True):
            values = await _daily(conn, call.account.id, plan)
            results.append(
                MetricDataResult(
                    id=query.id,
                    timestamps=[epoch(day) for day in plan.days],
                    values=values,
                )
            )
    return BatchGetMetricDataResponse(results=results, errors=[])


def _plan(query: BatchGetMetricDataQuery) -> _Plan:
    """Check a query; return its days and the filters of its events."""
    start, end = from_epoch(query.start_date), from_epoch(query.end_date)
    if end <= start:
        raise bad_request(f"Query {query.id}: EndDate must be after StartDate.")
    first = start.replace(hour=0, minute=0, second=0, microsecond=0)
    count = (end - first + timedelta(days=1) - timedelta(microseconds=1)).days
    if count > MAX_DAYS:
        raise bad_request(f"Query {query.id}: the range exceeds {MAX_DAYS} days.")
    plan = _Plan(query.metric, [first + timedelta(days=n) for n in range(count)])

    plan.where += ["e.created_at >= %s", "e.created_at < %s"]
    plan.params += [start, end]
    for name, value in (query.dimensions or {}).items():
        if name == "CONFIGURATION_SET":
            plan.where.append("m.configuration_set = %s")
            plan.params.append(value)
        elif name == "EMAIL_IDENTITY":
            clause, value_params = _identity_filter(query.id, value)
            plan.where.append(clause)
            plan.params += value_params
        else:
            raise bad_request(f"Query {query.id}: dimension {name} is not supported.")
        plan.join_messages = True
    return plan


def _identity_filter(query_id: str, value: str) -> tuple[str, list[Any]]:
    """Match messages sent from an address, or from a domain and its subdomains."""
    try:
        kind, name = identities.parse_identity(value)
    except IdentityError:
        raise bad_request(
            f"Query {query_id}: invalid EMAIL_IDENTITY <{value}>."
        ) from None
    if kind == "domain":
        return "(m.from_domain = %s or right(m.from_domain, %s) = %s)", [
            name,
            len(name) + 1,
            "." + name,
        ]
    # messages.source is the Source as written: bare, or "Name <address>".
    return "(lower(m.source) = %s or right(lower(m.source), %s) = %s)", [
        name,
        len(name) + 2,
        f"<{name}>",
    ]


async def _daily(conn: AsyncConnection[Any], account_id: str, plan: _Plan) -> list[int]:
    """Return the metric's count for each day of the plan."""
    counted = _COUNTS[plan.metric]
    if counted is None:
        return [0] * len(plan.days)
    expression, kind = counted
    join = " join messages m on m.id = e.message_id" if plan.join_messages else ""
    cur = await conn.execute(
        f"select date_trunc('day', e.created_at, 'UTC'), {expression}"
        f" from events e{join}"
        f" where e.account_id = %s and {kind} and {' and '.join(plan.where)}"
        " group by 1",
        [account_id, *plan.params],
    )
    by_day = {day.astimezone(UTC): int(n) for day, n in await cur.fetchall()}
    return [by_day.get(day, 0) for day in plan.days]
