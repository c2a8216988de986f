"""runtime: deployed engines, their gradient-enabled twins, re-attacks and verdicts (DESIGN.md §5).

What it will hold:
- one context-managed runner interface over ONNX Runtime (CPU, or CUDA with onnxruntime-gpu),
  TensorRT engines (lazy import) and the PyTorch model, feeding `rad_seed` when present;
- twins: the source checkpoint, a graph twin rebuilt op by op from the exported ONNX file, and
  precision twins emulating fp16 / int8 with straight-through gradients;
- verification: parity on clean and adversarial inputs, re-attacks computed on twins (EOT over
  RAD seeds), direct query-based and divergence attacks on the engine, sanity checks, gates
  and reports (`harden verify`).

Imports run one way: `runtime` may import `export` and `harden`.
"""
