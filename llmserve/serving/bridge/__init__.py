"""The service in its own process (`engine_process` knob), shared by the model instances on one device.

Why a process: in Triton's Python backend one stub process holds one GIL for Triton's `execute` calls, our
intake and response threads and the engine thread. The engine's eager prefill launches hold that GIL for
milliseconds at a time, so a burst of requests waits at intake (docs/performance.md has the figures). In its
own process the engine,
the detokenizer and stop strings run under their own GIL; the stub keeps intake, tokenizing and the sends.

Why shared: Triton gives every model instance (`instance_group [{ count: N }]`) a stub process of its own, so
N instances spread execute calls, intake, response sends and metric calls over N processes. They must not each
load the model, so they reach one engine process through an abstract Unix socket named after their share key.

Modules: `client` (`ServiceProcess`, the `Service` in the stub; finds or starts the engine process), `server`
(the engine process, `python -m llmserve.serving.bridge.server`), `messages` (what they say to each other).
This package imports neither: the engine process runs `server` as __main__, and must not find it imported.
"""
