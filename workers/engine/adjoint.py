"""Explicit adjoint propagation through the frozen model: the gradients of many targets with respect to
every leaf, as matrix products through the frozen attention patterns instead of autograd.

In the frozen model an MLP passes no gradient (its output is a constant injection plus an error and a δ
leaf), so from the residual after block k the only way back is the residual itself and the frozen
attention of block k. With the pre-attention norm frozen (``y_q = s_q · C(x_q) ⊙ w + b``) the transpose
of that attention sublayer acts on a gradient ``G [P, d]`` as

    G ↦ G + diag(s) · Σ_h pattern_hᵀ · G · W_Oᵀ_h · W_Vᵀ_h · diag(w) · C

(C the centring projector for LayerNorm, identity for RMSNorm): per head, a position matrix times a
feature matrix. A target at one position starts as a rank-1 gradient ``e_p ⊗ v``, so after m layers its
gradient is a sum of at most (H + 1)^m outer products ``a ⊗ u`` (position profile ⊗ feature vector).
Shallow targets (most feature rows) are therefore propagated in this factored form, which costs
O(r·d²) per target instead of O(P·d² + P²·d), and switch to a dense ``[P, d]`` gradient only when the
factored form would cost more. Position profiles depend only on the target's position, so targets at
one position share them.

Supported: pre-norm blocks ``x + attn(norm(x))`` with GPT-2's fused ``c_attn``/``c_proj`` or separate
``v_proj``/``o_proj`` (Llama, Mistral, Qwen; grouped-query attention), attention SAEs (they cut the
attention path, or pass it through their skip ``W_skip``), transcoders with or without skip connections
(a skip adds a position-diagonal term between the residual after a block and its mid-point). Gemma 2/3's
post-norms ``x + post(attn(pre(x)))`` and ``x + post(mlp(pre(x)))``: a frozen post-norm is one more
position-diagonal factor ``s_q · (·) F`` between the residual and the sublayer's output, so it folds into
the position maps (``diag(s_post)·pattern·diag(s_pre)``), the feature maps (``F_post · W_O W_V``, a skip
``F_post · W_skip · F_pre``) and the read-out of the sites' leaves (the δ leaves sit at the sublayers'
outputs, before the post-norms). QK-norm and Gemma's scaled embeddings only change frozen quantities (the
patterns, the embedding leaf's value), not the transpose. A cross-layer transcoder reading ``resid_mid``
reads the mid-point residual itself: its rows start there, without the pre-MLP norm's factor. QK targets
use autograd. ``AdjointModel.build``
checks itself numerically against autograd once per model and dictionary set, so an unrecognised
architecture falls back instead of giving wrong edges.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from workers.engine.linearise import Linearised, Trace, site_order
from workers.engine.norms import NormRecord, norm_params
from workers.engine.targets import tensor_site_bound
from workers.vocabulary import tensors as tn

# tensors a target may read for the adjoint path (queries/keys need gradients through W_Q/W_K: autograd)
_STARTS = (tn.FINAL, "resid", "in")  # tensor kinds a gradient can start from (workers/vocabulary/tensors.py)


@dataclass
class _BlockWeights:
    ln1: str  # module name of the pre-attention norm
    ln2: str  # module name of the pre-MLP norm
    post_attn: str | None  # post-norm of the attention output (Gemma 2/3), else None
    post_mlp: str | None  # post-norm of the MLP output (Gemma 2/3), else None
    Wo_t: torch.Tensor  # [d, H·hd]: gradient at the attention output -> gradient at the heads' outputs
    Wv_t: torch.Tensor  # [H·hd, d]: gradient at the heads' values -> gradient at the normed input (GQA expanded)
    n_heads: int


@dataclass
class _Norm:
    scale: torch.Tensor  # [P] frozen per-position scale
    F: torch.Tensor  # [d, d] = diag(w') · C: the norm's transpose on a row vector, without the scale
    diag: torch.Tensor | None = None  # w' when F is diagonal (RMSNorm: no centring), for elementwise products


@dataclass
class _LayerOp:
    """Transpose of block k between the residual after it (R_k) and the one before it (R_{k−1})."""

    pattern: torch.Tensor  # [H, P, P] frozen softmax output
    scale: torch.Tensor  # [P] pre-attention norm scale
    Wv: torch.Tensor  # [H, hd, d]: per-head value gradient -> residual, pre-attention norm's F folded in
    # from the residual: the attention output is read through an attention SAE's skip (W_skip) or not at
    # all (an SAE without skip: None, the layer is cut)
    Wo_res: torch.Tensor | None  # [H, d, hd]
    # a transcoder's skip connection: R_k -> M_k adds s2 ⊙ (g · W_skip · F2)
    mlp_skip: torch.Tensor | None  # [d, d] (a post-MLP norm's F folded in on the left)
    ln2_scale: torch.Tensor  # [P] (times a post-MLP norm's scale)
    # post-norms (Gemma): the gradient at a sublayer's output is s_q · (gradient at the residual) · F
    post_attn: _Norm | None = None
    post_mlp: _Norm | None = None
    # feature maps of the factored step, per head: Wo_h · Wv_h [H, d, d] (from the residual / from the
    # attention output); position maps per cone length P: diag(s) · pattern_hᵀ as [H, P, P] (contiguous)
    M_res: torch.Tensor | None = None
    M_out: torch.Tensor | None = None
    _pos_maps: dict = field(default_factory=dict)

    def position_maps(self, P: int, from_residual: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(pattern_h[:P, :P] · diag(s) for the factored profiles a ↦ a·pattern_h ⊙ s, and its transpose
        diag(s) · pattern_hᵀ for the dense step), both [H, P, P] contiguous. From the residual (not from
        the attention output itself) a post-attention norm's scale multiplies the query rows."""
        post = from_residual and self.post_attn is not None
        maps = self._pos_maps.get((P, post))
        if maps is None:
            if any(key[0] != P for key in self._pos_maps):
                self._pos_maps.clear()  # cone groups come in order of P: keep one length's maps only (memory)
            pat = self.pattern[:, :P, :P] * self.scale[:P]
            if post:
                assert self.post_attn is not None
                pat = pat * self.post_attn.scale[:P, None]
            maps = self._pos_maps[(P, post)] = (pat.contiguous(), pat.transpose(1, 2).contiguous())
        return maps


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _module_names(model: nn.Module) -> dict[int, str]:
    return {id(m): n for n, m in model.named_modules()}


def _block_weights(lin: Linearised) -> list[_BlockWeights] | None:
    """Per block, the names of its two norms and its value/output projections; None if not recognised."""
    names = _module_names(lin.model)
    out = []
    for b in lin.blocks:
        mod, attn = b.module, b.attn
        ln1 = getattr(mod, "ln_1", None) or getattr(mod, "input_layernorm", None)
        post_attn = post_mlp = None
        if hasattr(mod, "pre_feedforward_layernorm") or hasattr(mod, "post_feedforward_layernorm"):
            # Gemma 2/3: pre- and post-norms around both sublayers
            ln2 = getattr(mod, "pre_feedforward_layernorm", None)
            post_attn = getattr(mod, "post_attention_layernorm", None)
            post_mlp = getattr(mod, "post_feedforward_layernorm", None)
            if post_attn is None or post_mlp is None or id(post_attn) not in names or id(post_mlp) not in names:
                return None
        else:
            ln2 = getattr(mod, "ln_2", None) or getattr(mod, "post_attention_layernorm", None)
        if ln1 is None or ln2 is None or id(ln1) not in names or id(ln2) not in names:
            return None
        H = lin.n_heads
        c_attn, c_proj = getattr(attn, "c_attn", None), getattr(attn, "c_proj", None)
        v_proj, o_proj = getattr(attn, "v_proj", None), getattr(attn, "o_proj", None)
        if c_attn is not None and c_proj is not None and type(c_attn).__name__ == "Conv1D":
            d = int(attn.split_size)
            Wv_t = c_attn.weight.detach()[:, 2 * d:].T  # Conv1D: y = x @ W; value block [d_in, H·hd]
            Wo_t = c_proj.weight.detach().T  # [d, H·hd]
        elif isinstance(v_proj, nn.Linear) and isinstance(o_proj, nn.Linear):
            hd = o_proj.weight.shape[1] // H
            kvh = v_proj.weight.shape[0] // hd
            if kvh * hd != v_proj.weight.shape[0] or H % kvh:
                return None
            # grouped-query attention: head h reads kv head h // (H / kvh)
            Wv_t = v_proj.weight.detach().view(kvh, hd, -1).repeat_interleave(H // kvh, 0).reshape(H * hd, -1)
            Wo_t = o_proj.weight.detach()  # nn.Linear: y = x @ Wᵀ, so ∂/∂x is g @ W
        else:
            return None
        out.append(_BlockWeights(names[id(ln1)], names[id(ln2)],
                                 None if post_attn is None else names[id(post_attn)],
                                 None if post_mlp is None else names[id(post_mlp)], Wo_t.contiguous(),
                                 Wv_t.contiguous(), H))
    return out


def _final_norm_name(lin: Linearised) -> str | None:
    names = _module_names(lin.model)
    for attr in ("ln_f", "norm", "final_layernorm", "final_layer_norm"):
        m = getattr(lin.base, attr, None)
        if m is not None and id(m) in names:
            return names[id(m)]
    return None


def _norm(trace: Trace, lin: Linearised, name: str, module: nn.Module) -> _Norm | None:
    recs = trace.norms.get(name)
    if not recs or len(recs) != 1:
        return None
    rec: NormRecord = recs[0]
    w, _ = norm_params(module)
    d = lin.d_model
    wv = torch.ones(d) if rec.weight_form == "none" or w is None else w.detach().float()
    if rec.weight_form == "1+w":
        wv = 1.0 + wv
    F = torch.diag(wv)
    if rec.centre:
        F = F - wv[:, None] / d  # diag(w) · (I − 11ᵀ/d)
    return _Norm(rec.scale.reshape(-1).float(), F.contiguous(), None if rec.centre else wv.contiguous())


class AdjointModel:
    """The frozen model's transpose for one trace: build with ``AdjointModel.build(lin, trace)``."""

    def __init__(self, lin: Linearised, trace: Trace, weights: list[_BlockWeights], final_name: str) -> None:
        self.lin = lin
        self.trace = trace
        self.n_layers = lin.n_layers
        self.d = lin.d_model
        mods = dict(lin.model.named_modules())
        self.layers: list[_LayerOp] = []
        self.ln2: list[_Norm] = []
        for k, bw in enumerate(weights):
            n1 = _norm(trace, lin, bw.ln1, mods[bw.ln1])
            n2 = _norm(trace, lin, bw.ln2, mods[bw.ln2])
            if n1 is None or n2 is None or k not in trace.attn:
                raise _Unsupported(f"layer {k}: norms or attention not traced once")
            pa = None if bw.post_attn is None else _norm(trace, lin, bw.post_attn, mods[bw.post_attn])
            pm = None if bw.post_mlp is None else _norm(trace, lin, bw.post_mlp, mods[bw.post_mlp])
            if (bw.post_attn is not None and pa is None) or (bw.post_mlp is not None and pm is None):
                raise _Unsupported(f"layer {k}: post-norms not traced once")
            H = bw.n_heads
            Wv_t = bw.Wv_t.float() @ n1.F  # fold the norm's transpose (without its per-position scale)
            hd = Wv_t.shape[0] // H
            pat = trace.attn[k].pattern.float()
            if pat.shape[0] != H:
                raise _Unsupported(f"layer {k}: pattern has {pat.shape[0]} heads, expected {H}")
            Wo_t = bw.Wo_t.float()
            sae = lin.dictionaries.get(k, "attn")
            Wo_res_t: torch.Tensor | None = Wo_t
            if sae is not None:
                Wo_res_t = None if sae.W_skip is None else sae.W_skip.detach().float() @ Wo_t
            if Wo_res_t is not None and pa is not None:
                Wo_res_t = pa.F @ Wo_res_t  # the residual reads the attention output through the post-norm
            tc = lin.dictionaries.get(k, "mlp")
            mlp_skip = None if tc is None or tc.W_skip is None else (tc.W_skip.detach().float() @ n2.F).contiguous()
            ln2_scale = n2.scale
            if mlp_skip is not None and pm is not None:
                mlp_skip = (pm.F @ mlp_skip).contiguous()
                ln2_scale = n2.scale * pm.scale

            self.layers.append(_LayerOp(
                pattern=pat.contiguous(), scale=n1.scale, Wv=Wv_t.view(H, hd, self.d).contiguous(),
                Wo_res=None if Wo_res_t is None else _by_head(Wo_res_t, H),
                mlp_skip=mlp_skip, ln2_scale=ln2_scale, post_attn=pa, post_mlp=pm,
                M_res=None if Wo_res_t is None else torch.bmm(_by_head(Wo_res_t, H), Wv_t.view(H, hd, self.d)),
                M_out=torch.bmm(_by_head(Wo_t, H), Wv_t.view(H, hd, self.d))))
            self.ln2.append(n2)
        nf = _norm(trace, lin, final_name, mods[final_name])
        if nf is None:
            raise _Unsupported("final norm not traced once")
        self.final = nf
        self.n_heads = weights[0].n_heads if weights else 0

    # -- construction ------------------------------------------------------------------------------
    @staticmethod
    def build(lin: Linearised, trace: Trace) -> AdjointModel | None:
        """The adjoint for this trace, or None if the model is not of a supported form (then use autograd).
        The first call per model and dictionary set compares it with autograd on probe targets."""
        key = (*sorted((k, id(d)) for k, d in lin.dictionaries.dictionaries.items()), id(lin.clt))
        cached = _CACHE.get(lin)
        if cached is not None and cached[0] == key and not cached[1]:
            return None
        weights = _block_weights(lin)
        final_name = _final_norm_name(lin)
        if weights is None or final_name is None:
            _CACHE[lin] = (key, False)
            return None
        try:
            adj = AdjointModel(lin, trace, weights, final_name)
        except _Unsupported:
            return None
        if cached is None or cached[0] != key:
            ok = adj._agrees_with_autograd()
            _CACHE[lin] = (key, ok)
            if not ok:
                return None
        return adj

    def supports(self, tensor: str) -> bool:
        try:
            return tn.parse_tensor(tensor).kind in _STARTS
        except ValueError:
            return False

    # -- propagation -------------------------------------------------------------------------------
    def _start(self, tensor: str, pos: torch.Tensor, vec: torch.Tensor, P: int):
        """Initial factored gradient of n targets reading ``tensor``: (point k, at_mid, position profiles
        A [r, m, P] for the m unique positions, their target counts [m], feature vectors U [r, n, d]; r = 1
        term, or H for a target inside an attention). Targets come sorted by position. Point k is the
        residual after block k (R_k; −1: the embeddings), or with ``at_mid`` the one between its attention
        and its MLP (M_k)."""
        if bool((pos[1:] < pos[:-1]).any()):
            raise ValueError("targets must come sorted by position")
        upos, counts = torch.unique_consecutive(pos, return_counts=True)
        m = len(upos)
        A = torch.zeros(1, m, P)
        at_mid = False
        t = tn.parse_tensor(tensor)
        if t.kind == tn.FINAL:
            k, nrm = self.n_layers - 1, self.final
        elif t.kind == "resid":
            assert t.layer is not None
            k, nrm = t.layer, None
        elif t.site == "mlp":  # in:L{l}.mlp: the MLP's input, behind the frozen pre-MLP norm, or M_l itself
            assert t.layer is not None
            k = t.layer
            nrm, at_mid = (None if self.lin.reads_resid_mid else self.ln2[k]), True
        else:  # in:L{l}.attn: the gradient enters the attention of layer l at its output
            assert t.layer is not None
            layer = t.layer
            A[0, torch.arange(m), upos] = 1.0
            op = self.layers[layer]
            assert op.M_out is not None
            A, U = self._step(A, vec[None].float(), op.position_maps(P, from_residual=False)[0], op.M_out,
                              identity=False)
            return layer - 1, False, A, counts, U
        A[0, torch.arange(m), upos] = 1.0 if nrm is None else nrm.scale[upos]
        U = vec.float() if nrm is None else vec.float() @ nrm.F
        return k, at_mid, A, counts, U[None]

    @staticmethod
    def _step(A: torch.Tensor, U: torch.Tensor, pos_maps: torch.Tensor, feat_maps: torch.Tensor,
              identity: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One linear step on the factored form: every term (a, u) gives (a, u) (if ``identity``) and, per
        map h, (a·pos_maps[h], u·feat_maps[h]). A [r, m, P], U [r, n, d], pos_maps [H, P, P], feat_maps
        [H, d, d] -> ((H (+1))·r, ...): new terms map-major, so every map is one product written in place."""
        r, m, P = A.shape
        n, d = U.shape[1], U.shape[2]
        H = pos_maps.shape[0]
        first = 1 if identity else 0
        A2 = torch.empty(H + first, r * m, P)
        U2 = torch.empty(H + first, r * n, d)
        if identity:
            A2[0] = A.reshape(r * m, P)
            U2[0] = U.reshape(r * n, d)
        for h in range(H):
            torch.mm(A.reshape(r * m, P), pos_maps[h], out=A2[first + h])
            torch.mm(U.reshape(r * n, d), feat_maps[h], out=U2[first + h])
        return A2.view(-1, m, P), U2.view(-1, n, d)

    def _dense_attn(self, G: torch.Tensor, op: _LayerOp, P: int) -> torch.Tensor:
        """G [P, n, d] at M_k -> G at R_{k−1} (see module doc): per head three products, no copies."""
        assert op.Wo_res is not None
        _, n, d = G.shape
        H, hd = op.Wv.shape[0], op.Wv.shape[1]
        patT = op.position_maps(P)[1]  # diag(s) · pattern_hᵀ [H, P, P]
        G2 = G.reshape(P * n, d)
        out = G2.clone()
        for h in range(H):
            Y = (G2 @ op.Wo_res[h]).view(P, n * hd)  # [P, n·hd]
            Z = patT[h] @ Y  # positions mixed, the batch in columns
            out.addmm_(Z.view(P * n, hd), op.Wv[h])
        return out.view(P, n, d)

    def _factored_is_cheaper(self, r: int, P: int, heads: int) -> bool:
        """Cost per target of one more step in factored form (its products, plus materialising the
        (heads+1)·r terms for the read-out) against the dense step. Position profiles are shared by the
        targets at one position (a dozen or so per layer in practice): counted once per 8 targets. Depends on
        (r, P) only, never on the batch, so every target is computed the same way whatever batch it is in."""
        d = self.d
        factored = heads * r * d * d + (heads + 1) * r * P * d + heads * r * P * P // 8
        dense = (P * d * d) if heads == 1 else (2 * P * d * d + P * P * d)
        return factored < dense

    def leaf_gradients(self, tensor: str, pos: torch.Tensor, vec: torch.Tensor, P: int) -> dict[str, torch.Tensor]:
        """Gradients of n targets ``vec [n, d]·tensor[pos [n]]`` (sorted by position) with respect to every
        upstream leaf, on the first P positions: {"delta:L{k}.{site}" | "emb" | "pos": [P, n, d]}."""
        k, at_mid, A, counts, U = self._start(tensor, pos, vec, P)
        out: dict[str, torch.Tensor] = {}
        # the factored form (A, U) until the dense one pays; G is the dense gradient at point G_at
        G: torch.Tensor | None = None
        G_at: tuple[int, bool] | None = None
        dense = False
        bounds = [0] + torch.cumsum(counts, 0).tolist()

        def here() -> torch.Tensor:
            nonlocal G, G_at
            if G_at != (k, at_mid):
                assert not dense
                # per unique position j: G[:, targets at j] = A[:, j]ᵀ U[:, targets at j]  (one product)
                r, n, d = U.shape
                G = torch.empty(P, n, d)
                for j, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
                    # written in place: a column block of G viewed [P, n·d] (beta=0: G's contents ignored)
                    G.view(P, n * d)[:, a * d:b * d].addmm_(A[:, j].T, U[:, a:b].reshape(r, -1), beta=0)
                G_at = (k, at_mid)
            assert G is not None
            return G

        while True:
            if not at_mid:  # at R_k
                if k < 0:
                    out["emb"] = out["pos"] = here()
                    return out
                op = self.layers[k]
                out[tn.site_delta(k, "mlp")] = _through(here(), op.post_mlp, P)
                if op.mlp_skip is not None:  # R_k -> M_k through the transcoder's skip connection
                    if not dense and self._factored_is_cheaper(U.shape[0], P, 1):
                        A, U = self._step(A, U, torch.diag(op.ln2_scale[:P])[None], op.mlp_skip[None], True)
                    else:
                        Gk = here()
                        G = Gk + (Gk @ op.mlp_skip) * op.ln2_scale[:P, None, None]
                        G_at, dense = (k, True), True
                elif G_at == (k, False):
                    G_at = (k, True)  # no skip: the same gradient at the mid-point
                at_mid = True
            op = self.layers[k]
            out[tn.site_delta(k, "attn")] = _through(here(), op.post_attn, P)
            if op.M_res is not None:  # M_k -> R_{k−1} through the attention
                if not dense and self._factored_is_cheaper(U.shape[0], P, op.pattern.shape[0]):
                    A, U = self._step(A, U, op.position_maps(P)[0], op.M_res, identity=True)
                else:
                    G, G_at, dense = self._dense_attn(here(), op, P), (k - 1, False), True
            elif G_at == (k, True):
                G_at = (k - 1, False)
            k, at_mid = k - 1, False

    # -- self-check --------------------------------------------------------------------------------
    def _agrees_with_autograd(self) -> bool:
        """Leaf gradients of probe targets (every tensor kind, random vectors, the last positions) against
        autograd through the frozen forward."""
        tr, P = self.trace, self.trace.n_pos
        gen = torch.Generator().manual_seed(0)
        tensors = [tn.FINAL] + [tn.site_input(k, "mlp") for k in range(self.n_layers)] + [tn.resid(max(self.n_layers - 2, 0))]
        tensors += [tn.site_input(k, "attn") for k in range(self.n_layers) if (k, "attn") in tr.sites]
        run = self.lin.frozen_forward(tr, P, value_only=True)
        leaves = list(run.leaves_out)
        for tensor in tensors:
            if tensor not in run.tensors:
                return False
            p = torch.tensor([max(P - 2, 0), P - 1])
            vec = torch.randn(2, self.d, generator=gen, device="cpu").to(self.lin.device)  # same probes on any device
            mine = self.leaf_gradients(tensor, p, vec, P)
            for b in range(2):
                g_out = torch.zeros_like(run.tensors[tensor])
                g_out[0, p[b]] = vec[b].to(g_out.dtype)
                ref = torch.autograd.grad(run.tensors[tensor], [run.leaves_out[n] for n in leaves], g_out,
                                          retain_graph=True, allow_unused=True)
                bound = tensor_site_bound(tensor)
                for name, g in zip(leaves, ref, strict=True):
                    if name.startswith("delta:"):
                        leaf = tn.parse_tensor(name)
                        if site_order((leaf.layer, leaf.site)) >= bound:
                            continue  # not upstream: the read-out never looks at it
                    if g is None:
                        g = torch.zeros_like(run.leaves_out[name])
                    if name not in mine:
                        return False
                    tol = _self_check_tolerance(g.dtype) * max(1.0, float(g.abs().max()))
                    if float((mine[name][:, b] - g[0].float()).abs().max()) > tol:
                        return False
        return True


def _self_check_tolerance(dtype: torch.dtype) -> float:
    """Relative agreement the self-check asks of the adjoint (fp32 products) against autograd (in the weights'
    dtype): 1e-4 in fp32; bf16 autograd carries ~2⁻⁸ round-off per layer, so 5e-2, still far below the O(1)
    error of a wrong transpose (the self-check's purpose)."""
    return 1e-4 if torch.finfo(dtype).bits >= 32 else 5e-2


def _through(G: torch.Tensor, post: _Norm | None, P: int) -> torch.Tensor:
    """The gradient at a sublayer's output from the one at the residual it is added to: through its frozen
    post-norm, ``s_q · G[q] · F`` (G [P, n, d]); the same tensor without one."""
    if post is None:
        return G
    if post.diag is not None:  # RMSNorm (Gemma): F is diagonal, an elementwise product
        return G * post.diag * post.scale[:P, None, None]
    return (G @ post.F) * post.scale[:P, None, None]


def _by_head(W: torch.Tensor, H: int) -> torch.Tensor:
    """[d, H·hd] -> [H, d, hd] (head-major, for one batched product per layer)."""
    d = W.shape[0]
    return W.view(d, H, -1).permute(1, 0, 2).contiguous()


class _Unsupported(Exception):
    pass
