"""A schemathesis check for pgtide: every error answer is the contract's body.

SPEC section 6: errors are {"error": {"code": str, "message": str,
"details": [...]}}, details always present. Loaded with SCHEMATHESIS_HOOKS.
"""

import json

import schemathesis


@schemathesis.check
def error_body_shape(ctx, response, case):
    """Every 4xx and 5xx answers the contract's error body, as JSON."""
    if response.status_code < 400:
        return None
    content_type = response.headers.get("content-type", [""])
    if isinstance(content_type, list):
        content_type = content_type[0] if content_type else ""
    if not content_type.startswith("application/json"):
        raise AssertionError(
            f"{response.status_code} answered {content_type!r}, not the JSON error body"
        )
    try:
        body = json.loads(response.content)
    except ValueError as e:
        raise AssertionError(f"{response.status_code} body is not JSON: {e}")
    error = body.get("error") if isinstance(body, dict) else None
    if not (
        isinstance(error, dict)
        and isinstance(error.get("code"), str)
        and isinstance(error.get("message"), str)
        and isinstance(error.get("details"), list)
    ):
        raise AssertionError(
            f"{response.status_code} body is not {{\"error\": {{\"code\", \"message\", \"details\"}}}}: {body!r}"
        )
    return None


# CPython 3.11 before 3.11.9 can raise "SystemError: AST constructor
# recursion depth mismatch" from ast.parse (gh-106905). Hypothesis parses
# source only to describe a lambda in a strategy's repr; schemathesis's
# coverage phase then reports that as an error of the operation. The
# description is cosmetic, so fall back to the lambda's name.
try:
    from hypothesis.internal import lambda_sources as _lambda_sources

    _describe = _lambda_sources.lambda_description

    def _lambda_description(f):
        try:
            return _describe(f)
        except SystemError:
            return getattr(f, "__name__", "<lambda>")

    _lambda_sources.lambda_description = _lambda_description
except (ImportError, AttributeError):
    pass
