"""The baseline of the API benchmark: FastAPI parsing a form, answering fixed XML.

It is the bare endpoint of the reference measurements (FastAPI's own form parser,
two uuids in the XML), served by uvicorn with the same workers as Sesame's API, so it
measures what the HTTP framework alone costs on this machine.
"""

from __future__ import annotations

import uuid

from fastapi import FastAPI, Request
from fastapi.responses import Response

app = FastAPI()

_XML = (
    '<SendEmailResponse xmlns="http://ses.amazonaws.com/doc/2010-12-01/">'
    "<SendEmailResult><MessageId>{mid}</MessageId></SendEmailResult>"
    "<ResponseMetadata><RequestId>{rid}</RequestId></ResponseMetadata>"
    "</SendEmailResponse>"
)


@app.post("/")
async def send_email(request: Request) -> Response:
    form = await request.form()
    assert form.get("Action")
    body = _XML.format(mid=uuid.uuid4(), rid=uuid.uuid4())
    return Response(body, media_type="text/xml")
