"""The server's OpenAPI 3.1 document, built from the same pydantic models that validate the requests (so the
document and the checks cannot drift); served at GET /openapi.json and what schemathesis tests the server against."""

from __future__ import annotations

from omnitrain.serving.api import GenerateRequest, VideoRequest

_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string", "description": "What is wrong, naming the field."}},
    "required": ["error"],
}


def _errors(*codes: int) -> dict:
    words = {
        400: "The request is refused; the message names the field.",
        404: "No such route.",
        408: "The body did not arrive in time.",
        413: "The body is larger than the server accepts.",
        503: "The model is loading (or failed to load), or the server is busy.",
    }
    return {str(c): {"description": words[c], "content": {"application/json": {"schema": _ERROR}}} for c in codes}


def openapi_document(version: str = "0.1.0") -> dict:
    schemas: dict = {}

    def ref(model) -> dict:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    generate, videos = ref(GenerateRequest), ref(VideoRequest)
    # the same fields as a form, the media as files (multipart.py)
    fields = dict(schemas["VideoRequest"]["properties"])
    fields["reference_images"] = {"type": "array", "items": {"type": "string", "format": "binary"}, "maxItems": 4}
    fields["context_video"] = {"type": "string", "format": "binary"}
    form = {"type": "object", "properties": fields, "required": ["prompt"]}
    plain = {"200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "omnitrain inference server", "version": version},
        "paths": {
            "/healthz": {"get": {"summary": "Liveness: the process serves HTTP.", "responses": plain}},
            "/readyz": {
                "get": {
                    "summary": "Readiness: the model is loaded.",
                    "responses": {**plain, **_errors(503)},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics.",
                    "responses": {
                        "200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}
                    },
                }
            },
            "/v1/generate": {
                "post": {
                    "summary": "Embeddings and latents in, a latent video out.",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": generate}}},
                    "responses": {**plain, **_errors(400, 408, 413, 503)},
                }
            },
            "/v1/videos": {
                "post": {
                    "summary": "A prompt (+ reference images, a context clip) in, an MP4 out.",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": videos}, "multipart/form-data": {"schema": form}},
                    },
                    "responses": {
                        "200": {
                            "description": "The video (response: mp4), or JSON with its latent (response: latent).",
                            "content": {
                                "video/mp4": {"schema": {"type": "string", "format": "binary"}},
                                "application/json": {"schema": {"type": "object"}},
                            },
                        },
                        **_errors(400, 408, 413, 503),
                    },
                }
            },
        },
        "components": {"schemas": schemas},
    }


__all__ = ["openapi_document"]
