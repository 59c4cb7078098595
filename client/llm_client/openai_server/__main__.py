"""`python -m llm_client.openai_server --triton localhost:8001 --port 9000`: the OpenAI front, served by uvicorn."""

import sys

from llm_client.openai_server.cli import main

sys.exit(main())
