"""Kubernetes' own rules for names, label keys and values, resource names and image references, as apimachinery's
`validation` package writes them (k8s.io/apimachinery/pkg/util/validation): pure functions, no client.

Each `*_problem` function returns None when the text is valid, else the problem in the API server's words, so the
operator can refuse a spec before it creates anything the API would refuse (docs/operator.md, What is refused and
why). The operator's name fitting (omnitrain.operator.plan.fit_name, label_value) cuts to the same MAX_LABEL.
"""

from __future__ import annotations

import re

MAX_LABEL = 63  # a DNS-1123 label, a label value, the name part of a qualified name
MAX_SUBDOMAIN = 253

_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_LABEL_RE = re.compile(rf"^{_DNS1123_LABEL}$")
_DNS1123_SUBDOMAIN_RE = re.compile(rf"^{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*$")
_DNS1035_LABEL_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED_NAME_PART_RE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_WHITESPACE_RE = re.compile(r"\s")


def _shaped_problem(text: str, limit: int, pattern: re.Pattern[str], kind: str, rule: str) -> str | None:
    """apimachinery's two checks of a name: its length, then its characters."""
    if len(text) > limit:
        return f"is {len(text)} characters; a {kind} has at most {limit}"
    if not pattern.match(text):
        return f"is not a {kind} ({rule})"
    return None


def dns1123_label_problem(text: str) -> str | None:
    return _shaped_problem(
        text,
        MAX_LABEL,
        _DNS1123_LABEL_RE,
        "DNS-1123 label",
        "lowercase letters, digits and '-', starting and ending with a letter or digit",
    )


def dns1123_subdomain_problem(text: str) -> str | None:
    return _shaped_problem(
        text,
        MAX_SUBDOMAIN,
        _DNS1123_SUBDOMAIN_RE,
        "DNS-1123 subdomain",
        "lowercase letters, digits, '-' and '.', starting and ending with a letter or digit",
    )


def dns1035_label_problem(text: str) -> str | None:
    """A Service name (and so a pod's subdomain under it): a DNS-1123 label that starts with a letter."""
    return _shaped_problem(
        text,
        MAX_LABEL,
        _DNS1035_LABEL_RE,
        "DNS-1035 label",
        "lowercase letters, digits and '-', starting with a letter and ending with a letter or digit",
    )


def qualified_name_problem(text: str) -> str | None:
    """A label key, an annotation key, a toleration key, a resource name: `[prefix/]name`, the prefix a DNS-1123
    subdomain, the name at most 63 characters of letters, digits, '-', '_' and '.', alphanumeric at both ends."""
    parts = text.split("/")
    if len(parts) > 2:
        return "is not a qualified name: at most one '/' (prefix/name, e.g. example.com/my-key)"
    prefix, name = (parts[0], parts[1]) if len(parts) == 2 else ("", parts[0])
    if len(parts) == 2:
        if not prefix:
            return "is not a qualified name: the prefix before '/' is empty"
        inner = dns1123_subdomain_problem(prefix)
        if inner:
            return f"is not a qualified name: its prefix {prefix!r} {inner}"
    if not name:
        return "is not a qualified name: the name part is empty"
    if len(name) > MAX_LABEL:
        return f"is not a qualified name: the name part is {len(name)} characters, at most {MAX_LABEL}"
    if not _QUALIFIED_NAME_PART_RE.match(name):
        return (
            "is not a qualified name (letters, digits, '-', '_' and '.', starting and ending with a letter or digit, "
            "optionally after a DNS prefix and '/': example.com/my-key)"
        )
    return None


def label_value_problem(text: str) -> str | None:
    return _shaped_problem(
        text,
        MAX_LABEL,
        _LABEL_VALUE_RE,
        "label value",
        "empty, or letters, digits, '-', '_' and '.', starting and ending with a letter or digit",
    )


def extended_resource_problem(text: str) -> str | None:
    """A device's resource name as a container requests it (nvidia.com/gpu): fully qualified (a domain, then '/'),
    not in the kubernetes.io namespace, and `requests.<name>` a qualified name (what quota uses)."""
    if "/" not in text:
        return "is not an extended resource name: it needs a domain prefix and '/'"
    domain = text.split("/", 1)[0]
    if domain == "kubernetes.io" or domain.endswith(".kubernetes.io"):
        return (
            "is in the kubernetes.io namespace, which is reserved for Kubernetes' own resources (e.g. nvidia.com/gpu)"
        )
    return qualified_name_problem(text) or qualified_name_problem("requests." + text)


def image_problem(text: str) -> str | None:
    """What the pod API refuses of a container image (required, no leading or trailing whitespace); whitespace
    anywhere is refused too, since no image reference has any and the pull would fail."""
    if not text:
        return "is empty; a container needs an image"
    if _WHITESPACE_RE.search(text):
        return "contains whitespace; an image reference has none"
    return None


__all__ = [
    "MAX_LABEL",
    "MAX_SUBDOMAIN",
    "dns1035_label_problem",
    "dns1123_label_problem",
    "dns1123_subdomain_problem",
    "extended_resource_problem",
    "image_problem",
    "label_value_problem",
    "qualified_name_problem",
]
