"""Every span, event, metric and attribute name budgetkit emits, in one place.

GenAI names follow the OpenTelemetry GenAI semantic conventions v1.41.0 (the last release in
the core semantic-conventions repository). They are copied here rather than imported from
``opentelemetry-semantic-conventions``, which pins the API version and deprecates them.
Budget state lives under the private ``budgetkit.*`` namespace.
"""

from __future__ import annotations

from typing import Final

from ._policy import DIMENSIONS as _POLICY_DIMENSIONS

SCHEMA_URL: Final = "https://opentelemetry.io/schemas/1.41.0"
INSTRUMENTATION_NAME: Final = "budgetkit"

# ----------------------------------------------------------------------------- span names
SESSION_SPAN: Final = "budgetkit.session"
"""The session span of an unnamed session; a named one is ``invoke_agent {name}``."""
INVOKE_AGENT_SPAN: Final = "invoke_agent {name}"
EXECUTE_TOOL_SPAN: Final = "execute_tool {name}"
CHAT_SPAN: Final = "chat {model}"
CHAT_SPAN_NO_MODEL: Final = "chat"

# ----------------------------------------------------------------------------- GenAI (v1.41)
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_AGENT_NAME: Final = "gen_ai.agent.name"
GEN_AI_TOOL_NAME: Final = "gen_ai.tool.name"
GEN_AI_TOOL_TYPE: Final = "gen_ai.tool.type"
GEN_AI_TOOL_CALL_ARGUMENTS: Final = "gen_ai.tool.call.arguments"
GEN_AI_TOOL_CALL_RESULT: Final = "gen_ai.tool.call.result"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: Final = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: Final = "gen_ai.usage.cache_creation.input_tokens"
GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: Final = "gen_ai.usage.reasoning.output_tokens"
GEN_AI_INPUT_MESSAGES: Final = "gen_ai.input.messages"
GEN_AI_OUTPUT_MESSAGES: Final = "gen_ai.output.messages"
GEN_AI_SYSTEM_INSTRUCTIONS: Final = "gen_ai.system_instructions"
GEN_AI_CONVERSATION_ID: Final = "gen_ai.conversation.id"
"""The chain's root session id, on every span of a session and of its resumes."""
GEN_AI_RESPONSE_ID: Final = "gen_ai.response.id"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_TOKEN_TYPE: Final = "gen_ai.token.type"  # noqa: S105 - not a secret
ERROR_TYPE: Final = "error.type"

OP_INVOKE_AGENT: Final = "invoke_agent"
OP_EXECUTE_TOOL: Final = "execute_tool"
OP_CHAT: Final = "chat"
TOOL_TYPE_FUNCTION: Final = "function"
TOKEN_TYPE_INPUT: Final = "input"  # noqa: S105 - not a secret
TOKEN_TYPE_OUTPUT: Final = "output"  # noqa: S105 - not a secret

#: budgetkit's provider hints (pricing ids) mapped to ``gen_ai.provider.name`` values.
PROVIDER_NAMES: Final = {
    "google": "gcp.gen_ai",
    "gemini": "gcp.gemini",
    "vertex": "gcp.vertex_ai",
    "aws": "aws.bedrock",
    "bedrock": "aws.bedrock",
    "azure": "azure.ai.openai",
    "mistral": "mistral_ai",
    "xai": "x_ai",
    "x-ai": "x_ai",
}

# ----------------------------------------------------------------------------- budgetkit
SESSION_ID: Final = "budgetkit.session.id"
SESSION_NAME: Final = "budgetkit.session.name"
SESSION_RESUMED_FROM: Final = "budgetkit.session.resumed_from"
SESSION_STOP_REASON: Final = "budgetkit.session.stop_reason"
SESSION_STOPPED_BY: Final = "budgetkit.session.stopped_by"
SESSION_UNPRICED_CALLS: Final = "budgetkit.session.unpriced_calls"
SESSION_UNMEASURED_CALLS: Final = "budgetkit.session.unmeasured_calls"
BUDGET_STATUS: Final = "budgetkit.status"
"""The status line (``Budget: 2 of 5 steps left, ...``) on the session span and the exhausted
event: where the budget stood, readable in a span header."""
CALL_COST_USD: Final = "budgetkit.call.cost_usd"
CALL_COST_STATUS: Final = "budgetkit.call.cost_status"
"""``priced``, ``unpriced`` (usage but no known price) or ``unmeasured`` (no usage)."""
COST_PRICED: Final = "priced"
COST_UNPRICED: Final = "unpriced"
COST_UNMEASURED: Final = "unmeasured"
LINK_RESUMED_FROM: Final = "budgetkit.link.resumed_from"

#: Budget dimensions, keyed by the limit name (from the policy's one table). Each has
#: ``budgetkit.<dim>.limit``, ``budgetkit.<dim>.used`` and ``budgetkit.<dim>.remaining``.
DIMENSIONS: Final = {d.limit: d.attribute for d in _POLICY_DIMENSIONS}


LIMIT_KEYS: Final = {k: f"budgetkit.{v}.limit" for k, v in DIMENSIONS.items()}
USED_KEYS: Final = {k: f"budgetkit.{v}.used" for k, v in DIMENSIONS.items()}
REMAINING_KEYS: Final = {k: f"budgetkit.{v}.remaining" for k, v in DIMENSIONS.items()}


# ----------------------------------------------------------------------------- events
EXHAUSTED_EVENT: Final = "budgetkit.budget.exhausted"
EXHAUSTED_REASON: Final = "budgetkit.budget.reason"
EXHAUSTED_LIMIT: Final = "budgetkit.budget.limit"
EXHAUSTED_USED: Final = "budgetkit.budget.used"
EXHAUSTED_REFUSED_STEP: Final = "budgetkit.budget.refused_step"
EXHAUSTED_ERROR_TYPE: Final = "budgetkit.BudgetExhausted"

# ----------------------------------------------------------------------------- metrics
METRIC_TOKEN_USAGE: Final = "gen_ai.client.token.usage"  # noqa: S105 - not a secret
METRIC_COST: Final = "budgetkit.cost"
METRIC_EXHAUSTIONS: Final = "budgetkit.exhaustions"
TOKEN_BUCKETS: Final = (
    1,
    4,
    16,
    64,
    256,
    1024,
    4096,
    16384,
    65536,
    262144,
    1048576,
    4194304,
    16777216,
    67108864,
)

# ----------------------------------------------------------------------------- settings
CAPTURE_CONTENT_ENV: Final = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
CAPTURE_CONTENT_ON: Final = frozenset({"true", "1", "yes", "span_only", "span_and_event"})
