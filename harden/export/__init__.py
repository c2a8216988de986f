"""harden.export: PyTorch → ONNX → engines (the middle of the pipeline, docs/design.md §1 and §4).

- `onnx_export`: the dynamo export, MAS and RAD as nodes of the custom `harden` domain with
  function bodies of standard ops (`onnx_ops`), `rad_seed` as a graph input;
- `precision`: fp16 and int8 (Q/DQ) variants made at the ONNX level;
- `parity`: every file compared with the PyTorch model through Polygraphy;
- `manifest`: what an export directory holds, hash-checked;
- `tensorrt`, `fuse_attention`, `triton_kernels`: engines and their plugins (lazy, docs/design.md §7);
- `pipeline`: `harden export` end to end.

The folder is `export/` at the repository root; it installs as `harden.export`. Imports run one
way: it may import `harden`, never `harden.runtime`.
"""
