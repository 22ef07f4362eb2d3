"""One JSON POST with a timeout, retries and errors that name the address: the transport of every remote
feedback source.

Two callers share it: the ``http://`` / ``https://`` reward source
(:class:`~rlxf.feedback.rewards.HttpReward`) and the OpenAI-compatible judge
(:class:`~rlxf.feedback.lm_judge.OpenAIPairJudge`). :func:`post_json` sends the body, waits ``timeout``
seconds for each attempt and returns the decoded JSON answer. What it retries and what it does not:

* a connection that fails (refused, reset, timed out: the server may be restarting or busy) is tried again
  up to ``retries`` times, after 0.5 s, 1 s, 2 s ...;
* an HTTP error status is not retried: the server answered, and asking again gets the same answer;
* an answer that is not JSON is an error at once.

Every failure is a :class:`RemoteError` whose message starts with the URL.

Left out: concurrent requests, streaming answers, and proxies or TLS settings beyond what ``urllib`` reads
from the environment.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

EXCERPT = 300
"""Characters of an unexpected answer quoted in an error message."""


class RemoteError(RuntimeError):
    """A remote scorer or judge did not answer with JSON (unreachable, an HTTP error status, not JSON)."""


def post_json(
    url: str,
    body: Any,
    *,
    timeout: float = 60.0,
    retries: int = 2,
    headers: Mapping[str, str] | None = None,
) -> Any:
    """POST ``body`` as JSON to ``url`` and return the decoded JSON answer.

    ``timeout`` bounds each attempt (seconds); a failed connection is retried ``retries`` times with a
    growing pause; ``headers`` are sent besides ``Content-Type: application/json`` (an ``Authorization``
    header, say). Raises :class:`RemoteError` naming ``url`` on any failure.
    """
    if timeout <= 0 or retries < 0:
        raise ValueError(f"timeout must be > 0 and retries >= 0, got {timeout} and {retries}")
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
        method="POST",
    )
    attempts = retries + 1
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                payload = response.read()
            break
        except urllib.error.HTTPError as exc:  # before URLError: it is one, but the server did answer
            detail = exc.read()[:EXCERPT].decode(errors="replace")
            raise RemoteError(f"{url}: HTTP {exc.code} {exc.reason}: {detail}") from exc
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            if attempt == retries:
                raise RemoteError(
                    f"{url}: no answer after {attempts} attempt{'s' if attempts > 1 else ''} "
                    f"({type(exc).__name__}: {reason})"
                ) from exc
            pause = 0.5 * 2**attempt
            logger.warning("%s: %s; trying again in %.1f s", url, reason, pause)
            time.sleep(pause)
    try:
        return json.loads(payload)
    except json.JSONDecodeError as exc:
        raise RemoteError(f"{url}: the answer is not JSON: {payload[:EXCERPT]!r}") from exc


__all__ = ["RemoteError", "post_json"]
