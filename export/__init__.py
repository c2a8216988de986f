"""export: PyTorch → ONNX → engines (the middle of the pipeline, DESIGN.md §1 and §4).

What it will hold:
- ONNX export with the dynamo exporter, MAS and RAD as bare nodes of the custom `harden` domain
  (op types that are not builtin names, with `plugin_namespace`/`plugin_version` attributes for
  TensorRT) and their function bodies in standard ops attached, so any ONNX Runtime runs them;
  `rad_seed` as an int64 graph input when RAD is on; checker and strict shape inference on
  every export;
- a parity check after every export through Polygraphy's Comparator;
- precision variants made at the ONNX level (fp16; int8 with explicit Q/DQ from calibration),
  because TensorRT 11 is strongly typed;
- TensorRT engine building and plugins, behind a lazy import (DESIGN.md §7).

Imports run one way: `export` may import `harden`, never `runtime`.
"""
