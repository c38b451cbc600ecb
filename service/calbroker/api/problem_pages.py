"""`GET /problems/{slug}`: the human page behind every problem `type` URI."""

from __future__ import annotations

import re

from litestar import get
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Template
from markupsafe import Markup, escape

from calbroker.api.problems import CATALOGUE

__all__ = ["problem_index", "problem_page", "register_template_filters"]

_CODE = re.compile(r"`([^`]+)`")


def _inline_code(text: str) -> Markup:
    """Escape, then render `backticked` spans as <code>, as the catalogue's prose is written."""
    return Markup(_CODE.sub(r"<code>\1</code>", str(escape(text))))  # noqa: S704 - escaped first


def register_template_filters(engine: JinjaTemplateEngine) -> None:
    """Filters shared by every server-rendered page."""
    engine.engine.filters["inline_code"] = _inline_code


@get("/problems", tags=["problems"], summary="Every problem type the API can return", include_in_schema=False)
async def problem_index() -> Template:
    return Template("problems.html", context={"problems": sorted(CATALOGUE.values(), key=lambda p: p.slug)})


@get(
    "/problems/{slug:str}",
    tags=["problems"],
    summary="Explanation of one problem type",
    include_in_schema=False,
)
async def problem_page(slug: FromPath[str]) -> Template:
    problem = CATALOGUE.get(slug)
    if problem is None:
        raise NotFoundException()
    return Template("problem.html", context={"problem": problem})
