"""Live llama.cpp backend: random-weight hybrid models, a local server, the harness and calibration.

``tinymodel`` writes qwen35 GGUFs (and lfm2 ones for builds before qwen35); ``server`` starts
xllamacpp or a llama-server binary on 127.0.0.1 with its log in a file; ``harness`` drives it and
appends raw measurements to JSONL;
``calibrate`` fits a :class:`ckptsim.cost.CostProfile` and replays the requests in the simulator.
Needs the ``live`` extra (xllamacpp, gguf) only to generate models and run servers.
"""
