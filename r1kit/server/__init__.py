"""r1kit.server: the OpenAI-compatible HTTP API (`r1kit serve`), the terminal chat (`r1kit chat`) and the web page.

    protocol.py      request/response schemas (pydantic), the wire contract
    errors.py        OpenAI-style error bodies for every failure
    async_engine.py  one thread owns the LLMEngine; asyncio queues carry each request's outputs
    metrics.py       Prometheus counters and histograms, written by hand
    api.py           the FastAPI app: create_app(engine, ...)
    cli.py           `r1kit serve`;  chat_cli.py: `r1kit chat`;  static/chat.html: the web page at /
"""
