//! Translation between the OpenAI and Anthropic APIs.
