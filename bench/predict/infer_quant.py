"""Quantized generation (``quant: int8 | nf4 | fp4``): the weights bitsandbytes stores, and
the workspace each of its matmul kernels allocates.

``bench run`` loads the model through transformers' bitsandbytes integration
(``BitsAndBytesConfig``, ``bench.recipe.Quantization``). ``replace_with_bnb_linear``
swaps every ``nn.Linear`` but the modules of ``get_keys_to_not_convert`` (the output
embedding ``lm_head`` and tied weights; ``llm_int8_skip_modules`` unset) for
``Linear8bitLt`` or ``Linear4bit``; embeddings, norms and biases keep the compute dtype
(``quant.is_quantized`` decides, as for QLoRA's base). Unlike QLoRA, nothing is upcast:
no ``prepare_model_for_kbit_training`` in inference.

What one quantized weight of ``n = out x in`` elements holds on the GPU:

- **int8** (``Int8Params``, ``bitsandbytes/nn/modules.py``): ``CB``, the int8 weight
  (``n`` bytes), and ``SCB``, one fp32 absmax per output row (``out x 4``).
- **nf4 / fp4** (``Params4bit``, ``functional.quantize_4bit``, blocksize 64): the packed
  values two per byte (``(n + 1) // 2``), one fp32 absmax per 64-block, and the 16-entry
  fp32 code table of the type (made per weight by ``get_4bit_type``). Double quantization
  stores the absmax in uint8 blocks of 256 with an fp32 absmax each and one fp32 offset;
  the 256-entry dynamic map is one tensor shared by every weight (``name2qmap``).

The workspace of each kernel (``bitsandbytes/autograd/_functions.py``), live while its
output is made, emitted into the meta trace by ``Workspaces``' module hooks:

- **int8**, ``MatMul8bitLt.forward``: the input cast to fp16 (a copy unless it is fp16),
  ``int8_vectorwise_quant``'s int8 copy ``CA`` and fp32 row scales ``SCA``, and the int32
  accumulator of ``int8_linear_matmul`` (tokens x out x 4) that ``int8_mm_dequant`` turns
  into the fp16 output; a bf16 model casts that output back (one more copy). The
  mixed-precision outlier columns (threshold 6.0) depend on the activations' values and
  are not counted.
- **nf4 / fp4**, ``matmul_4bit``: a single token (batch 1 decode: ``A.numel() ==
  A.shape[-1]``, no grad) takes ``gemv_4bit``, with no workspace; anything else
  (prefill, decode with batch > 1) ``MatMul4Bit``, which dequantizes the whole weight to
  the compute dtype (``dequantize_4bit``: out x in x 2 bytes, after an fp32 copy of the
  absmax when double-quantized) and multiplies with ``F.linear``.

Loading quantizes each weight on the GPU from its half-precision copy, one at a time;
that moment is below the generation's peak for the models here and is not replayed.
"""

from __future__ import annotations

from bench.predict.quant import BLOCK, NESTED_BLOCK, NF4_CODE, is_quantized
from bench.predict.trace import Param
from bench.recipe import Quantization


def tensors(numel: int, shape: tuple[int, ...], q: Quantization) -> list[int]:
    """Bytes of each tensor one quantized weight of ``shape`` keeps on the GPU."""
    if q.kind == "int8":
        return [numel, shape[0] * 4]  # CB, SCB
    blocks = -(-numel // BLOCK)
    if not q.double:
        return [(numel + 1) // 2, blocks * 4, NF4_CODE]  # packed, fp32 absmax, code table
    nested = -(-blocks // NESTED_BLOCK)
    return [(numel + 1) // 2, blocks, nested * 4, 4, NF4_CODE]  # packed, uint8 absmax, absmax2, offset, code


def weight_bytes(named: list[tuple], q: Quantization) -> list[int]:
    """The allocations of the weights, in load order: quantized tensors for the linear
    weights, the traced bytes (compute dtype) for everything else."""
    out: list[int] = []
    for name, numel, nbytes, shape in named:
        if is_quantized(Param(name, numel, nbytes, False, shape)):
            out += tensors(numel, shape, q)
        else:
            out.append(nbytes)
    return out


def quantized_modules(model) -> dict:
    """The ``nn.Linear`` modules bitsandbytes replaces, by name."""
    import torch

    out = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            w = module.weight
            if is_quantized(Param(f"{name}.weight", w.numel(), 0, False, tuple(w.shape))):
                out[name] = module
    return out


class Workspaces:
    """Hooks on every quantized linear of the meta model: allocate, before the matmul, the
    workspace its bitsandbytes kernel holds while the output is made; free it after."""

    def __init__(self, q: Quantization) -> None:
        self.q = q

    def attach(self, model, log) -> list:
        import torch

        held: dict[int, list] = {}
        q = self.q

        def before(module, args):
            phase, log.phase = log.phase, "workspace"
            try:
                _workspace(module, args)
            finally:
                log.phase = phase

        def _workspace(module, args):
            x = args[0]
            tokens = x.numel() // x.shape[-1]
            out_f, in_f = module.weight.shape
            dev = x.device
            keep = []
            if q.kind == "int8":
                if x.dtype != torch.float16:
                    keep.append(torch.empty((tokens, in_f), dtype=torch.float16, device=dev))
                keep.append(torch.empty((tokens, in_f), dtype=torch.int8, device=dev))  # CA
                keep.append(torch.empty((tokens,), dtype=torch.float32, device=dev))  # SCA
                keep.append(torch.empty((tokens, out_f), dtype=torch.int32, device=dev))  # out_i32
                if x.dtype != torch.float16:
                    keep.append(torch.empty((tokens, out_f), dtype=torch.float16, device=dev))  # fp16 result
            elif x.numel() != x.shape[-1]:  # MatMul4Bit: dequantize the whole weight
                blocks = -(-module.weight.numel() // BLOCK)
                absmax = torch.empty((blocks,), dtype=torch.float32, device=dev) if q.double else None
                keep.append(torch.empty((out_f, in_f), dtype=x.dtype, device=dev))
                del absmax  # the dequantized absmax lives until the weight is made
            held[id(module)] = keep

        def after(module, args, output):
            held.pop(id(module), None)

        hooks = []
        for module in quantized_modules(model).values():
            hooks.append(module.register_forward_pre_hook(before))
            hooks.append(module.register_forward_hook(after))
        return hooks

    def finish(self, t: dict) -> None:
        pass
