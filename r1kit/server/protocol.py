"""The wire contract of the OpenAI-compatible API: request and response schemas.

Requests are validated here, before anything reaches the engine, so a malformed body is a 400 naming the bad field
(see errors.py), never an exception deep in the engine. Field names and meanings follow OpenAI's API; reasoning
models add what DeepSeek's API, vLLM, SGLang and llama.cpp add:

    response  message.reasoning_content / delta.reasoning_content   the thinking (text up to </think>)
              message.content / delta.content                         the answer
              usage.completion_tokens_details.reasoning_tokens        tokens spent thinking
    request   max_thinking_tokens: int         thinking budget; when spent, the engine closes the thinking block
              return_token_ids: true            also return prompt_token_ids and choices[].token_ids
              thinking: false                   answer without thinking (the prompt pre-fills an empty block);
              chat_template_kwargs: {"thinking": false}   the same, spelled as vLLM/SGLang clients send it
              messages[].reasoning_content      accepted and dropped (earlier turns keep only the answer)
              stop_in_reasoning: true           stop strings also end the thinking (default: the answer only)

Unknown top-level fields are ignored (clients send vendor extensions); fields we know are checked strictly.
"""
from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def _well_formed(s: str) -> str:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    return s


Text = Annotated[str, AfterValidator(_well_formed)]
StopStrings = Union[Annotated[Text, Field(min_length=1)], Annotated[list[Annotated[Text, Field(min_length=1)]],
                                                                   Field(max_length=16)]]
Seed = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class StreamOptions(_Request):
    include_usage: bool = False


class JsonSchemaFormat(_Request):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: Optional[str] = None
    description: Optional[str] = None
    schema_: Optional[dict[str, Any]] = Field(None, alias="schema")
    strict: Optional[bool] = None


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaFormat] = None


class _SamplingFields(_Request):
    """Sampling fields common to both endpoints (OpenAI names; top_k, min_p, repetition_penalty as in vLLM)."""

    model: Optional[str] = None
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    top_k: Optional[int] = Field(None, ge=-1, le=1_000_000)
    min_p: Optional[float] = Field(None, ge=0, le=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    n: int = Field(1, ge=1, le=32)
    stop: Optional[StopStrings] = None
    stop_in_reasoning: bool = False  # extension: stop strings also end the thinking (default: the answer only)
    seed: Optional[Seed] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    repetition_penalty: float = Field(1.0, gt=0, le=10)
    min_tokens: int = Field(0, ge=0)
    ignore_eos: bool = False
    max_thinking_tokens: Optional[int] = Field(None, ge=0)
    return_token_ids: bool = False  # extension (as vLLM): prompt_token_ids and choices[].token_ids, non-streaming
    logit_bias: Optional[dict[str, float]] = None  # token id (a JSON key: a string) -> bias in [-100, 100]
    user: Optional[str] = None
    # structured outputs (at most one; applied to the answer, after the thinking): OpenAI's response_format, and
    # vLLM's structured_outputs {json|json_object|regex|choice|grammar} and guided_* extensions
    response_format: Optional[ResponseFormat] = None
    structured_outputs: Optional[dict[str, Any]] = None
    guided_json: Optional[Union[dict[str, Any], str]] = None
    guided_regex: Optional[str] = None
    guided_choice: Optional[list[str]] = None
    guided_grammar: Optional[str] = None


class TextPart(_Request):
    type: Literal["text"]
    text: Text


FunctionName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]


class FunctionDefinition(_Request):
    name: FunctionName
    description: Optional[Text] = None
    parameters: Optional[dict[str, Any]] = None  # a JSON schema of the arguments object
    strict: Optional[bool] = None


class Tool(_Request):
    type: Literal["function"]  # OpenAI's "custom" tools (free-form text input) are not supported: 400
    function: FunctionDefinition


class FunctionRef(_Request):
    name: FunctionName


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: FunctionRef


class FunctionCall(_Request):
    name: Text
    arguments: Text  # JSON text, as the model wrote it


class ToolCall(_Request):
    id: Text
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Optional[Union[Text, list[TextPart]]] = None
    reasoning_content: Optional[str] = None  # accepted, never put back into the prompt
    name: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = None  # assistant turns that called tools
    tool_call_id: Optional[Text] = None  # role "tool": the call this result answers

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)
    thinking: Optional[bool] = None
    chat_template_kwargs: Optional[dict[str, Any]] = None
    # OpenAI fields that do not change the output (hints, bookkeeping): accepted, not used
    metadata: Optional[dict[str, Any]] = None
    prompt_cache_key: Optional[str] = None
    prompt_cache_options: Optional[Any] = None
    prompt_cache_retention: Optional[Any] = None
    safety_identifier: Optional[str] = None
    service_tier: Optional[str] = None
    prediction: Optional[Any] = None  # predicted output: a latency hint only
    store: Optional[bool] = None  # true is refused (nothing is stored)
    # tool calls (server/tool_calls.py): functions only; parallel_tool_calls: false allows one call when enforced
    tools: Optional[list[Tool]] = Field(None, max_length=128)
    tool_choice: Optional[Union[Literal["none", "auto", "required"], NamedToolChoice]] = None
    parallel_tool_calls: Optional[bool] = None
    # OpenAI fields r1kit cannot honour: a 400 naming the field when given (see refuse_unsupported)
    audio: Optional[Any] = None
    modalities: Optional[list[str]] = None
    moderation: Optional[Any] = None
    reasoning_effort: Optional[str] = None
    verbosity: Optional[str] = None
    web_search_options: Optional[Any] = None
    functions: Optional[list[Any]] = None  # deprecated by OpenAI for tools; refused in tool_calls.tool_policy
    function_call: Optional[Any] = None

    def refuse_unsupported(self) -> tuple[str, str] | None:
        """(field, why) for the first field given with a value r1kit cannot honour, else None."""
        why = {
            "audio": "audio output is not supported (text only)",
            "moderation": "moderation is not supported",
            "reasoning_effort": "reasoning_effort is not supported; use max_thinking_tokens (a thinking budget) "
                                "or thinking: false",
            "verbosity": "verbosity is not supported",
            "web_search_options": "web search is not supported",
        }
        for name, message in why.items():
            if getattr(self, name) is not None:
                return name, message
        if self.modalities is not None and self.modalities != ["text"]:
            return "modalities", "only the text modality is supported"
        if self.store:
            return "store", "store: true is not supported (r1kit stores nothing)"
        return None

    def thinking_enabled(self) -> bool:
        if self.thinking is not None:
            return self.thinking
        kwargs = self.chat_template_kwargs or {}
        for key in ("thinking", "enable_thinking"):
            if key in kwargs:
                return bool(kwargs[key])
        return True


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
MAX_PROMPTS = 2048  # prompts in one /v1/completions request (OpenAI's limit for token-id arrays)


class CompletionRequest(_SamplingFields):
    # one prompt (text or token ids) or a batch of them: one choice per prompt (times n)
    prompt: Union[Text, TokenIds, Annotated[list[Text], Field(min_length=1, max_length=MAX_PROMPTS)],
                  Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)]]
    max_tokens: Optional[int] = Field(None, ge=0)  # 0 with echo: score the prompt without generating
    logprobs: Optional[int] = Field(None, ge=0, le=20)
    echo: bool = False
    best_of: Optional[int] = Field(None, ge=1, le=32)
    suffix: Optional[str] = None  # refused with a 400: no fill-in-the-middle

    def prompts(self) -> list[str] | list[list[int]]:
        """The prompt as a batch: a list of texts or a list of token-id lists."""
        if isinstance(self.prompt, str) or (self.prompt and isinstance(self.prompt[0], int)):
            return [self.prompt]
        return list(self.prompt)


# ---- responses ----

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    completion_tokens_details: CompletionTokensDetails


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob]


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: Optional[str]
    reasoning_content: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = None


class ChatChoice(BaseModel):
    index: int
    message: ResponseMessage
    logprobs: Optional[ChoiceLogprobs] = None
    finish_reason: Optional[str]


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ToolCallDelta(BaseModel):
    index: int
    id: Optional[str] = None
    type: Optional[Literal["function"]] = None
    function: dict[str, str]  # name (first delta of a call), arguments (a piece)


class Delta(BaseModel):
    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None
    reasoning_content: Optional[str] = None
    tool_calls: Optional[list[ToolCallDelta]] = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: Optional[ChoiceLogprobs] = None
    finish_reason: Optional[str] = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Optional[Usage] = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: Optional[list[dict[str, float]]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: Optional[CompletionLogprobs] = None
    finish_reason: Optional[str]


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Optional[Usage] = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "r1kit"
    max_model_len: Optional[int] = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorInfo
