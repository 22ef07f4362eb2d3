"""The labelling app's JSON API as pydantic models: every request body and every response.

FastAPI validates request bodies against these (a bad body is a 422 naming the field, before the route
runs) and responses too (a route cannot answer something its documented schema does not allow), and
the OpenAPI schema built from them is what ``tests/test_label_fuzz.py`` drives every route with.

Every string a client sends is :data:`Text`: bounded, and checked with
:func:`rlxf.feedback.label.schema.check_text` (no lone surrogates, no NUL), so nothing unstorable reaches
the database. Ids in paths are bounded to 32-bit integers (:data:`rlxf.feedback.label.auth.MAX_ID`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from rlxf.feedback.label.schema import MAX_LABELS_PER_ITEM, MAX_RESPONSES, FieldError, check_text


def _storable(value: str) -> str:
    try:
        return check_text(value, "value")
    except FieldError as exc:
        raise ValueError(exc.message) from None


Text = Annotated[str, AfterValidator(_storable)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is a 422 naming it, not silently dropped


# ------------------------------------------------------------------------------------------ request bodies


class LoginBody(BaseModel):
    username: Text = Field(max_length=200)
    password: Text = Field(max_length=1024)


class AnswerBody(Strict):
    client_id: Text = Field(min_length=1, max_length=100)
    choice: Literal["A", "B", "tie", "both_bad"] | None = None
    ranking: list[int] | None = Field(default=None, max_length=MAX_RESPONSES)
    ratings: list[dict[str, int]] | None = Field(default=None, max_length=MAX_RESPONSES)
    reason: Text | None = Field(default=None, max_length=10_000)


class UserBody(Strict):
    username: Text = Field(max_length=200)
    password: Text = Field(max_length=1024)
    is_admin: bool = False


class UserPatchBody(Strict):
    disabled: bool


class PasswordBody(Strict):
    password: Text = Field(max_length=1024)


class OwnPasswordBody(Strict):
    current_password: Text = Field(max_length=1024)
    new_password: Text = Field(max_length=1024)


class MemberBody(Strict):
    username: Text = Field(max_length=200)


class ProjectBody(Strict):
    name: Text = Field(max_length=200)
    kind: Literal["pairwise", "ranking", "rating"]
    guidelines: Text = ""
    labels_per_item: int = Field(default=1, ge=1, le=MAX_LABELS_PER_ITEM)
    aspects: list[Text] | None = None
    scale: int = 5
    ask_reason: Literal["off", "optional", "required"] = "optional"
    items: list[Any]  # checked item by item (rlxf.feedback.label.schema.check_candidates): the 422 names it
    members: list[Text] = []


# ---------------------------------------------------------------------------------------------- responses


class UserOut(BaseModel):
    id: int
    username: str
    is_admin: bool
    disabled: bool


class UserRow(UserOut):
    active_sessions: int


class LoginOut(BaseModel):
    user: UserOut
    csrf_token: str


class Progress(BaseModel):
    done: int
    total: int


class ProjectOut(BaseModel):
    id: int
    name: str
    kind: Literal["pairwise", "ranking", "rating"]
    guidelines: str
    aspects: list[str]
    scale: int
    labels_per_item: int
    ask_reason: Literal["off", "optional", "required"]
    progress: Progress


class ResponseSlot(BaseModel):
    slot: int
    text: str


class NextItem(BaseModel):
    item_id: int
    prompt: str
    responses: list[ResponseSlot]
    progress: Progress


class AnswerAck(BaseModel):
    answer_id: int
    progress: Progress


class AnswerOut(BaseModel):
    answer_id: int
    client_id: str
    item_id: int
    user_id: int
    choice: Literal["A", "B", "tie", "both_bad"] | None = None  # as sent, in display slots
    ranking: list[int] | None = None
    ratings: list[dict[str, int]] | None = None
    display_order: list[int]
    value: dict[str, Any]  # the same answer in original response indices
    reason: str | None
    created_at: str
    username: str | None = None  # on the admin's list of everyone's answers


class Agreement(BaseModel):
    items_with_2plus: int
    percent_agreement: float | None
    krippendorff_alpha: float | None
    labels: int
    labellers: int


class MemberAdded(BaseModel):
    project_id: int
    user: UserOut


class Revoked(BaseModel):
    revoked: int


class ErrorOut(BaseModel):
    detail: str | list[dict[str, Any]]


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route: these error statuses, each with the :class:`ErrorOut` body."""
    why = {
        400: "bad request (e.g. an unreadable body)",
        401: "not logged in, or the session ended",
        403: "no CSRF header, or not allowed",
        404: "no such project, item, user or member",
        409: "conflicts with what is stored",
        413: "request body over the limit",
        422: "a field is invalid: detail[0].loc names it",
        429: "too many failed logins: see Retry-After",
        503: "busy: see Retry-After",
    }
    return {status: {"model": ErrorOut, "description": why[status]} for status in statuses}
