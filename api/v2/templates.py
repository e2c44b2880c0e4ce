"""SESv2 email templates: create, read, update, delete, list and test-render.

Templates take the Handlebars subset of :mod:`mta.templates`. Resource tags
are accepted but not stored; GetEmailTemplate answers an empty Tags list.
"""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime
from typing import Annotated, NoReturn

from fastapi import APIRouter, Path, Query
from pydantic import Field

from api import sending
from api.v2.auth import CallerDep, V2Route, bad_request, error, not_found
from api.v2.models import (
    EmptyResponse,
    SesModel,
    Tag,
    decode_page_token,
    encode_page_token,
    epoch,
)
from api.v2.outbound import EmailTemplateContent  # one schema for both uses
from mta import templates
from mta.templates import TemplateError
from sesame import ids

router = APIRouter(route_class=V2Route, tags=["Email templates"])

# SES v2 ListEmailTemplates: 10 per page unless asked, at most 100.
DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 100

TemplateNamePath = Annotated[
    str, Path(alias="TemplateName", min_length=1, description="The template's name.")
]


class CreateEmailTemplateRequest(SesModel):
    """A new template."""

    template_name: str = Field(min_length=1, description="1-64 of A-Z a-z 0-9 _ -.")
    template_content: EmailTemplateContent = Field(description="The parts.")
    tags: list[Tag] = Field(default_factory=list, description="Accepted, not stored.")


class CreateEmailTemplateResponse(EmptyResponse):
    """The template exists."""


class GetEmailTemplateResponse(SesModel):
    """One template."""

    template_name: str = Field(description="The template's name.")
    template_content: EmailTemplateContent = Field(description="The parts.")
    tags: list[Tag] = Field(default_factory=list, description="Always empty.")


class UpdateEmailTemplateRequest(SesModel):
    """New parts for an existing template."""

    template_content: EmailTemplateContent = Field(description="The parts.")


class UpdateEmailTemplateResponse(EmptyResponse):
    """The template has the new parts."""


class DeleteEmailTemplateResponse(EmptyResponse):
    """The template is gone."""


class EmailTemplateMetadata(SesModel):
    """A template in a listing."""

    template_name: str = Field(description="The template's name.")
    created_timestamp: float = Field(description="Creation time (epoch seconds).")


class ListEmailTemplatesResponse(SesModel):
    """A page of templates, in name order."""

    templates_metadata: list[EmailTemplateMetadata] = Field(description="The page.")
    next_token: str | None = Field(
        default=None, description="Present when more follow."
    )


class TestRenderEmailTemplateRequest(SesModel):
    """Data to render a stored template with."""

    template_data: str = Field(
        max_length=templates.MAX_DATA_CHARS, description="A JSON object."
    )


class TestRenderEmailTemplateResponse(SesModel):
    """The rendered template as a MIME message."""

    rendered_template: str = Field(description="Headers and body, no addresses.")


@router.post(
    "/templates",
    name="CreateEmailTemplate",
    operation_id="CreateEmailTemplate",
    response_model=CreateEmailTemplateResponse,
)
async def create_email_template(
    body: CreateEmailTemplateRequest, call: CallerDep
) -> CreateEmailTemplateResponse:
    """Store a new template; its parts must parse."""
    content = body.template_content
    async with call.runtime.pool.connection() as conn:
        try:
            created = await templates.put_template(
                conn,
                call.account.id,
                body.template_name,
                subject=content.subject,
                text=content.text,
                html=content.html,
                create=True,
            )
        except TemplateError as exc:
            _refuse(exc)
    if not created:
        raise error(
            "AlreadyExistsException", f"Template {body.template_name} already exists."
        )
    return CreateEmailTemplateResponse()


@router.get(
    "/templates",
    name="ListEmailTemplates",
    operation_id="ListEmailTemplates",
    response_model=ListEmailTemplatesResponse,
    response_model_exclude_none=True,
)
async def list_email_templates(
    call: CallerDep,
    next_token: Annotated[
        str | None, Query(alias="NextToken", description="From the previous page.")
    ] = None,
    page_size: Annotated[
        int | None,
        Query(alias="PageSize", ge=1, description="Templates per page, at most 100."),
    ] = None,
) -> ListEmailTemplatesResponse:
    """List the account's templates by name."""
    limit = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    after = decode_page_token(next_token)
    if after is not None and not isinstance(after, str):
        raise bad_request("The NextToken is not valid.")
    async with call.runtime.pool.connection() as conn:
        rows = await templates.list_templates(
            conn, call.account.id, after=after, limit=limit + 1
        )
    page = rows[:limit]
    return ListEmailTemplatesResponse(
        templates_metadata=[
            EmailTemplateMetadata(
                template_name=t.name, created_timestamp=epoch(t.created_at)
            )
            for t in page
        ],
        next_token=encode_page_token(page[-1].name) if len(rows) > limit else None,
    )


@router.get(
    "/templates/{TemplateName}",
    name="GetEmailTemplate",
    operation_id="GetEmailTemplate",
    response_model=GetEmailTemplateResponse,
    response_model_exclude_none=True,
)
async def get_email_template(
    template_name: TemplateNamePath, call: CallerDep
) -> GetEmailTemplateResponse:
    """Return a template's parts."""
    async with call.runtime.pool.connection() as conn:
        found = await templates.get_template(conn, call.account.id, template_name)
    if found is None:
        raise _does_not_exist(template_name)
    return GetEmailTemplateResponse(
        template_name=found.name,
        template_content=EmailTemplateContent(
            subject=found.subject, text=found.text, html=found.html
        ),
    )


@router.put(
    "/templates/{TemplateName}",
    name="UpdateEmailTemplate",
    operation_id="UpdateEmailTemplate",
    response_model=UpdateEmailTemplateResponse,
)
async def update_email_template(
    template_name: TemplateNamePath, body: UpdateEmailTemplateRequest, call: CallerDep
) -> UpdateEmailTemplateResponse:
    """Replace a template's parts."""
    content = body.template_content
    async with call.runtime.pool.connection() as conn:
        try:
            updated = await templates.put_template(
                conn,
                call.account.id,
                template_name,
                subject=content.subject,
                text=content.text,
                html=content.html,
                create=False,
            )
        except TemplateError as exc:
            _refuse(exc)
    if not updated:
        raise _does_not_exist(template_name)
    return UpdateEmailTemplateResponse()


@router.delete(
    "/templates/{TemplateName}",
    name="DeleteEmailTemplate",
    operation_id="DeleteEmailTemplate",
    response_model=DeleteEmailTemplateResponse,
)
async def delete_email_template(
    template_name: TemplateNamePath, call: CallerDep
) -> DeleteEmailTemplateResponse:
    """Delete a template."""
    async with call.runtime.pool.connection() as conn:
        deleted = await templates.delete_template(conn, call.account.id, template_name)
    if not deleted:
        raise _does_not_exist(template_name)
    return DeleteEmailTemplateResponse()


@router.post(
    "/templates/{TemplateName}/render",
    name="TestRenderEmailTemplate",
    operation_id="TestRenderEmailTemplate",
    response_model=TestRenderEmailTemplateResponse,
)
async def test_render_email_template(
    template_name: TemplateNamePath,
    body: TestRenderEmailTemplateRequest,
    call: CallerDep,
) -> TestRenderEmailTemplateResponse:
    """Render a stored template with data, as the message it would send."""
    async with call.runtime.pool.connection() as conn:
        found = await templates.get_template(conn, call.account.id, template_name)
    if found is None:
        raise _does_not_exist(template_name)
    try:
        rendered = templates.render(
            found.subject, found.text, found.html, body.template_data
        )
        mime = templates.preview(
            rendered,
            message_id_header=sending.message_id_header(
                call.runtime, ids.new_message_id()
            ),
            date=email.utils.format_datetime(datetime.now(UTC)),
        )
    except TemplateError as exc:
        _refuse(exc)
    return TestRenderEmailTemplateResponse(rendered_template=mime)


def _does_not_exist(name: str) -> Exception:
    return not_found(f"Template {name} does not exist.")


def _refuse(exc: TemplateError) -> NoReturn:
    """Raise a template error as SES v2 names it."""
    if exc.code == "LimitExceeded":
        raise error("LimitExceededException", exc.message) from None
    raise bad_request(exc.message) from None
