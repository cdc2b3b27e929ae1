"""The HTTP layer of `gpt2 serve`: OpenAI's completions API and the Write With Transformer page, on Starlette.

Routes:

* `POST /v1/completions`: OpenAI's request fields (`model`, `prompt` as a string, list of strings, token ids or list
  of token-id lists, `max_tokens`, `temperature`, `top_p`, `n`, `stop`, `seed`, `stream`, `stream_options`,
  `echo`, `best_of` = n, `user`) plus `top_k` (as in `generate`). `stream: true` answers server-sent events in
  OpenAI's chunk format, ending with `data: [DONE]`. Unsupported settings (`logprobs`, penalties, `logit_bias`,
  `suffix`) are a 400, not silently ignored.
* `GET /v1/models`, `GET /v1/models/{id}`, `GET /health`; `GET /` the page (gpt2_apps/static).

Errors always have OpenAI's JSON shape `{"error": {"message", "type", "param", "code"}}` and never carry a
traceback: 400 bad JSON / unknown field / out-of-range value / prompt + max_tokens over n_positions, 401 wrong or
missing API key (when the server has one), 404 unknown model or route, 413 body over 1 MiB, 429 queue full
(with Retry-After), 503 shutting down, 500 anything else (logged, not shown).

Reference: OpenAI API reference, "Completions" (legacy) and "Streaming"; vLLM's OpenAI-compatible server.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any, Union

from pydantic import BaseModel, ConfigDict, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HTTPRequest
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from gpt2_apps.serve.engine import Engine, QueueFull, Request, Sampling, ShuttingDown

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
MAX_BODY_BYTES = 1 << 20
MAX_STOP = 4


class APIError(Exception):
    """An error answered in OpenAI's shape.

    Args:
        status: HTTP status.
        message: What is wrong and how to fix it.
        type: OpenAI's error type (`invalid_request_error`, ...).
        param: The request field at fault, if any.
        code: A machine-readable code, if any.
    """

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


Float = Union[StrictFloat, StrictInt]
TokenIds = list[StrictInt]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: StrictBool | None = None


class CompletionRequest(BaseModel):
    """OpenAI's completion request fields (unknown fields are an error), plus `top_k`."""

    model_config = ConfigDict(extra="forbid")

    model: StrictStr
    prompt: Union[StrictStr, list[StrictStr], TokenIds, list[TokenIds]] = "<|endoftext|>"
    max_tokens: StrictInt | None = 16
    temperature: Float | None = 1.0
    top_p: Float | None = 1.0
    top_k: StrictInt | None = None
    n: StrictInt | None = 1
    stop: Union[StrictStr, list[StrictStr], None] = None
    seed: StrictInt | None = None
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    echo: StrictBool | None = False
    logprobs: StrictInt | None = None
    best_of: StrictInt | None = None
    frequency_penalty: Float | None = 0.0
    presence_penalty: Float | None = 0.0
    logit_bias: dict[str, Float] | None = None
    suffix: StrictStr | None = None
    user: StrictStr | None = None


def _validation_message(e: ValidationError) -> tuple[str, str | None]:
    err = e.errors()[0]
    loc = [str(x) for x in err.get("loc", ()) if not str(x).startswith(("str", "list[", "int", "float", "bool"))]
    param = loc[0] if loc else None
    if err.get("type") == "extra_forbidden":
        return (f"Unrecognized request argument supplied: {param}. Remove it; the supported fields are "
                f"{', '.join(CompletionRequest.model_fields)}."), param
    if err.get("type") == "missing":
        return f"Missing required parameter: {param}.", param
    received = json.dumps(err.get("input"), default=str)
    if len(received) > 80:
        received = received[:77] + "..."
    return f"Invalid value for {'.'.join(loc) or 'the body'}: {err.get('msg')}. Received: {received}.", param


class CompletionService:
    """Turns validated requests into engine requests and engine events into OpenAI responses.

    Args:
        engine: The batching engine (started by the app's lifespan).
        tokenizer: Encodes prompts and decodes token-id prompts for `echo`.
        backend: Shown in /health, /v1/models and `system_fingerprint`.
        model_id: The id clients pass as `model` (and /v1/models lists).
        api_key: If set, /v1/* needs `Authorization: Bearer <api_key>`.
        max_n: Choices per request at most.
    """

    def __init__(self, engine: Engine, tokenizer: Any, *, backend: str, model_id: str, api_key: str | None = None,
                 max_n: int = 16) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.backend = backend
        self.model_id = model_id
        self.api_key = api_key or None
        self.max_n = max_n
        self.n_positions = engine.config.n_positions
        self.vocab_size = engine.config.vocab_size
        self.eos_id = min(engine.eos_ids) if engine.eos_ids else 0
        self.created = int(time.time())

    # --- checks ------------------------------------------------------------------------------------------------

    def check_auth(self, request: HTTPRequest) -> None:
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        if not header:
            raise APIError(401, "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
                           code="invalid_api_key")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), self.api_key.encode()):
            raise APIError(401, "Incorrect API key provided. Use the key the server was started with (--api-key).",
                           code="invalid_api_key")

    async def parse(self, request: HTTPRequest) -> CompletionRequest:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise APIError(413, f"Request body too large. Received: {length} bytes. Send at most {MAX_BODY_BYTES}.")
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise APIError(413, f"Request body too large. Received: {len(raw)} bytes. Send at most {MAX_BODY_BYTES}.")
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise APIError(400, f"The request body is not valid JSON ({e}). Send a JSON object.") from None
        if not isinstance(data, dict):
            raise APIError(400, f"The request body must be a JSON object. Received: {type(data).__name__}.")
        try:
            return CompletionRequest.model_validate(data)
        except ValidationError as e:
            message, param = _validation_message(e)
            raise APIError(400, message, param=param) from None

    def prompts(self, body: CompletionRequest) -> list[list[int]]:
        p = body.prompt
        if isinstance(p, str):
            items: list[Any] = [p]
        elif not p:
            raise APIError(400, "prompt must not be an empty list. Received: prompt=[].", param="prompt")
        elif isinstance(p[0], int):
            items = [p]
        else:
            items = list(p)
        out = []
        for item in items:
            if isinstance(item, str):
                ids = self.tokenizer.encode(item) if item else []
            else:
                bad = [t for t in item if not 0 <= t < self.vocab_size]
                if bad:
                    raise APIError(400, f"Token ids must be in [0, {self.vocab_size}). Received: {bad[:5]}.",
                                   param="prompt")
                ids = list(item)
            out.append(ids or [self.eos_id])  # an empty prompt starts from <|endoftext|>, as GPT-2 was trained
        return out

    def settings(self, body: CompletionRequest, prompts: list[list[int]]) -> dict[str, Any]:
        def bad(param: str, message: str) -> APIError:
            return APIError(400, message, param=param)

        if body.model != self.model_id:
            raise APIError(404, f"The model `{body.model}` does not exist. This server serves `{self.model_id}` "
                                "(GET /v1/models).", param="model", code="model_not_found")
        n = 1 if body.n is None else body.n
        if not 1 <= n <= self.max_n:
            raise bad("n", f"n must be in [1, {self.max_n}]. Received: n={n}.")
        if body.best_of is not None and body.best_of != n:
            raise bad("best_of", f"best_of other than n is not supported. Received: best_of={body.best_of}, n={n}.")
        if body.logprobs is not None:
            raise bad("logprobs", f"logprobs is not supported by this server. Received: logprobs={body.logprobs}. "
                                  "Leave it unset.")
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(body, name):
                raise bad(name, f"{name} is not supported. Received: {name}={getattr(body, name)}. Leave it 0.")
        if body.logit_bias:
            raise bad("logit_bias", "logit_bias is not supported. Leave it unset.")
        if body.suffix:
            raise bad("suffix", "suffix (insertion) is not supported by GPT-2. Leave it unset.")
        temperature = 1.0 if body.temperature is None else float(body.temperature)
        if not 0.0 <= temperature <= 2.0:
            raise bad("temperature", f"temperature must be in [0, 2]. Received: temperature={temperature}.")
        top_p = 1.0 if body.top_p is None else float(body.top_p)
        if not 0.0 < top_p <= 1.0:
            raise bad("top_p", f"top_p must be in (0, 1]. Received: top_p={top_p}.")
        top_k = body.top_k or 0
        if top_k < 0:
            raise bad("top_k", f"top_k must be >= 0. Received: top_k={top_k}.")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > MAX_STOP:
            raise bad("stop", f"stop takes at most {MAX_STOP} strings. Received: {len(stop)}.")
        longest = max(len(p) for p in prompts)
        max_tokens = body.max_tokens if body.max_tokens is not None else self.n_positions - longest
        if max_tokens < 1:
            raise bad("max_tokens", f"max_tokens must be at least 1. Received: max_tokens={max_tokens}.")
        if longest + max_tokens > self.n_positions:
            raise APIError(
                400,
                f"This model's maximum context length is {self.n_positions} tokens, however you requested "
                f"{longest + max_tokens} tokens ({longest} in your prompt; {max_tokens} for the completion). "
                "Please reduce your prompt or completion length.",
                param="max_tokens" if longest < self.n_positions else "prompt", code="context_length_exceeded")
        greedy = temperature == 0.0
        sampling = Sampling() if greedy else Sampling(True, temperature, top_p, top_k)
        return dict(n=n, max_tokens=max_tokens, sampling=sampling, stop=stop, seed=body.seed)

    # --- answering ---------------------------------------------------------------------------------------------

    async def complete(self, request: HTTPRequest) -> Response:
        self.check_auth(request)
        body = await self.parse(request)
        prompts = self.prompts(body)
        settings = self.settings(body, prompts)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def publish(event: str, payload: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (event, payload))

        job = Request(prompts, publish=publish, **settings)
        try:
            self.engine.submit(job)
        except QueueFull as e:
            raise APIError(429, str(e), type="requests", code="rate_limit_exceeded", headers={"Retry-After": "1"})
        except ShuttingDown as e:
            raise APIError(503, str(e), type="server_error", code="shutting_down")
        except ValueError as e:
            raise APIError(400, str(e), param="n")
        meta = {
            "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": self.model_id, "system_fingerprint": f"gpt2-{self.backend}",
        }
        n = settings["n"]
        echoes = [self.tokenizer.decode(p, skip_special_tokens=False) if body.echo else "" for p in prompts]
        echoes = [echoes[i // n] for i in range(len(prompts) * n)]
        prompt_tokens = sum(len(p) for p in prompts)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                self._stream(job, queue, meta, echoes, prompt_tokens, include_usage),
                media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await self._wait(request, job, queue, meta, echoes, prompt_tokens)

    @staticmethod
    def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    async def _wait(self, http: HTTPRequest, job: Request, queue: asyncio.Queue, meta: dict, echoes: list[str],
                    prompt_tokens: int) -> Response:
        texts = list(echoes)
        reasons: list[str | None] = [None] * len(texts)
        completion_tokens = 0
        try:
            while True:
                try:
                    event, payload = await asyncio.wait_for(queue.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    if await http.is_disconnected():
                        job.cancel()
                        return Response(status_code=499)
                    continue
                if event == "delta":
                    texts[payload[0]] += payload[1]
                elif event == "finish":
                    reasons[payload[0]] = payload[1]
                    completion_tokens += payload[2]
                elif event == "error":
                    raise APIError(payload[0], payload[1], type="server_error")
                elif event == "done":
                    break
        except asyncio.CancelledError:
            job.cancel()
            raise
        choices = [{"text": t, "index": i, "logprobs": None, "finish_reason": r}
                   for i, (t, r) in enumerate(zip(texts, reasons))]
        return JSONResponse({**meta, "choices": choices, "usage": self._usage(prompt_tokens, completion_tokens)})

    async def _stream(self, job: Request, queue: asyncio.Queue, meta: dict, echoes: list[str], prompt_tokens: int,
                      include_usage: bool):
        def chunk(index: int, text: str, finish_reason: str | None = None) -> str:
            choice = {"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}
            body = {**meta, "choices": [choice]}
            if include_usage:
                body["usage"] = None
            return f"data: {json.dumps(body)}\n\n"

        completion_tokens = 0
        finished = False
        try:
            for i, text in enumerate(echoes):
                if text:
                    yield chunk(i, text)
            while True:
                event, payload = await queue.get()
                if event == "delta":
                    yield chunk(payload[0], payload[1])
                elif event == "finish":
                    completion_tokens += payload[2]
                    yield chunk(payload[0], "", payload[1])
                elif event == "error":
                    yield f"data: {json.dumps(APIError(*payload, type='server_error').body())}\n\n"
                    break
                elif event == "done":
                    break
            if include_usage:
                usage = self._usage(prompt_tokens, completion_tokens)
                yield f"data: {json.dumps({**meta, 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"
            finished = True
        finally:
            if not finished:  # the client went away (or the server stops): free the slots
                job.cancel()

    # --- the other routes --------------------------------------------------------------------------------------

    def model_card(self) -> dict[str, Any]:
        return {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "gpt2-frameworks",
                "backend": self.backend, "n_positions": self.n_positions}

    async def models(self, request: HTTPRequest) -> Response:
        self.check_auth(request)
        return JSONResponse({"object": "list", "data": [self.model_card()]})

    async def model(self, request: HTTPRequest) -> Response:
        self.check_auth(request)
        if request.path_params["model"] != self.model_id:
            raise APIError(404, f"The model `{request.path_params['model']}` does not exist.", param="model",
                           code="model_not_found")
        return JSONResponse(self.model_card())

    async def health(self, request: HTTPRequest) -> Response:
        ok = self.engine.running
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "backend": self.backend, "model": self.model_id,
             "pending": self.engine.pending, "max_pending": self.engine.max_pending,
             "max_batch": self.engine.max_batch, "stats": dict(self.engine.stats)},
            status_code=200 if ok else 503,
        )


def create_app(engine: Engine, tokenizer: Any, *, backend: str, model_id: str, api_key: str | None = None,
               max_n: int = 16, manage_engine: bool = True) -> Starlette:
    """The ASGI app. With `manage_engine`, the app's lifespan starts the engine and stops it on shutdown
    (after the server stopped taking connections and let in-flight ones finish, uvicorn's graceful shutdown)."""
    service = CompletionService(engine, tokenizer, backend=backend, model_id=model_id, api_key=api_key, max_n=max_n)

    async def index(request: HTTPRequest) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def api_error(request: HTTPRequest, exc: APIError) -> Response:
        return exc.response()

    async def http_error(request: HTTPRequest, exc: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = (f"Unknown route {request.method} {request.url.path}." if exc.status_code in (404, 405)
                   else str(exc.detail))
        return APIError(exc.status_code, message, code=code).response()

    async def server_error(request: HTTPRequest, exc: Exception) -> Response:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return APIError(500, "The server had an error while processing your request.", type="server_error").response()

    def lifespan(app: Starlette):
        import contextlib

        @contextlib.asynccontextmanager
        async def run():
            if manage_engine:
                engine.start()
            try:
                yield
            finally:
                if manage_engine:
                    await asyncio.get_running_loop().run_in_executor(None, engine.stop)

        return run()

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/health", service.health, methods=["GET"]),
        Route("/v1/models", service.models, methods=["GET"]),
        Route("/v1/models/{model:path}", service.model, methods=["GET"]),
        Route("/v1/completions", service.complete, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={APIError: api_error, HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
    app.state.service = service
    return app
