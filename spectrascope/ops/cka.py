"""Linear CKA and streaming mini-batch CKA (pure tensor maths: no hooks, no I/O).

Definitions (Kornblith et al. 2019; Song et al. 2012; Nguyen, Raghu & Kornblith 2021), for
features ``X`` (n x p) and ``Y`` (n x q) of the same n examples, ``K = X Xᵀ``, ``L = Y Yᵀ``:

* biased (plug-in) HSIC:  ``HSIC0(K, L) = tr(K H L H) / (n-1)²`` with ``H = I - 11ᵀ/n``;
* unbiased HSIC:          ``HSIC1(K, L) = <U_K, U_L>_F / (n(n-3))`` where ``U_K`` is the
  U-centred Gram matrix (zero diagonal, ``U_ij = K̃_ij - s_i/(n-2) - s_j/(n-2) + S/((n-1)(n-2))``,
  ``K̃`` = K with zeroed diagonal, ``s`` its row sums, ``S`` its total), defined for n >= 4;
* mini-batch CKA over batches i:  ``Σ HSIC(K_i, L_i) / sqrt(Σ HSIC(K_i, K_i) · Σ HSIC(L_i, L_i))``.

Numerics: every feature is flattened per example and centred within its batch *before* the
Gram product is formed. Both estimators are invariant to a feature offset in exact
arithmetic, but an uncentred float32 Gram matrix loses the signal to cancellation when
features have a large mean (post-ReLU, residual streams: torch-cka's failure). The features
are shifted by the batch's first example (which removes a common offset as well as the
mean does, without a reduction pass), the n x n Gram product is formed chunk by chunk over
the features in a reused scratch buffer (at most ``CHUNK_ELEMS`` shifted values at once),
and the exact double centring ``H K H`` is applied to the small matrix in float64: the
result is the Gram matrix of the column-centred features. The per-tap work in a hook is
one subtraction and one matrix product; centring, U-centring and normalisation of all taps
of a batch are one batched float64 pass, and all the pairwise HSIC terms of a batch are one
matrix product ``(n_a, n²) @ (n², n_b)``. Accumulators are float64.

Precision of the Gram products (``dtype``): by default float64 for float64 features and
float32 for all others (float32, bfloat16, float16), the "float32 after per-batch column
centring" equivalent of a float64 computation. Centring removes the cancellation, so this
agrees with the float64 path to ~1e-7 on the reference fixtures (tested at 1e-6,
ill-conditioned ones included) and is 1.7-1.8x faster on CPUs (more on GPUs with slow
float64). ``dtype=torch.float64`` forces float64 products (tested at 1e-10).

The unbiased mini-batch CKA can be negative and lies in [-1, 1] in exact arithmetic. A tap
whose features are constant over all examples (zero variance, or variance below the
rounding level of its input dtype) has no defined CKA: its cells are NaN and a diagnostic
names it.
"""
from __future__ import annotations

import math
import warnings
from types import SimpleNamespace
from typing import NamedTuple, Sequence

import torch

from spectrascope.errors import OptionError

__all__ = ["ESTIMATORS", "ENGINES", "TorchCKACompat", "make_engine", "Gram", "Finished", "compute_dtype", "shifted_gram", "finish_grams",
           "normalised_gram", "u_centre", "hsic", "linear_cka",
           "MinibatchCKA"]

ESTIMATORS = ("unbiased", "biased")
#: the two computations behind ``--engine``
ENGINES = ("spectrascope", "torch-cka")

#: largest number of float64 values materialised at once when centring features
CHUNK_ELEMS = 1 << 20


def _check_estimator(estimator: str) -> str:
    if estimator not in ESTIMATORS:
        raise OptionError(f"estimator must be one of {', '.join(ESTIMATORS)}, not {estimator!r}",
                          option="--estimator")
    return estimator


class Gram(NamedTuple):
    """One tap's batch reduced for CKA: ``matrix`` = ``(X - x₀)(X - x₀)ᵀ``, the Gram matrix of
    the per-example flattened features shifted by the batch's first example (in the compute
    dtype), ``ref_energy`` = ``‖x₀‖²`` (float64 0-dim tensor; a scale for detecting constant
    taps) and ``eps`` = machine epsilon of the features' dtype. ``finish_grams`` turns a
    list of them into normalised Gram matrices in one batched float64 pass."""

    matrix: torch.Tensor
    ref_energy: torch.Tensor
    eps: float


def compute_dtype(dtype: torch.dtype | None, feature_dtype: torch.dtype) -> torch.dtype:
    """Precision of the Gram products: ``dtype`` when given, otherwise ("auto") float64 for
    float64 features and float32 for everything else (the features are centred first)."""
    if dtype is not None:
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"Gram products are float32 or float64, not {dtype}")
        return dtype
    return torch.float64 if feature_dtype == torch.float64 else torch.float32


class Workspace:
    """A reusable scratch buffer for the shifted feature chunks (no allocation per tap)."""

    def __init__(self):
        self._bufs: dict = {}

    def get(self, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (dtype, device)
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, dtype=dtype, device=device)
            self._bufs[key] = buf
        return buf[:numel]


def shifted_gram(x: torch.Tensor, dtype: torch.dtype | None = None, *, chunk_elems: int = CHUNK_ELEMS,
                 workspace: Workspace | None = None) -> Gram:
    """Reduce one tap's batch ``x`` (n, ...) to a ``Gram``: the n x n product of its
    per-example flattened features shifted by the first example, formed in ``dtype``
    (see ``compute_dtype``) chunk by chunk over the features, so at most ``chunk_elems``
    shifted values exist at once. Shifting removes any common offset just like the mean
    does (and needs no reduction pass), so the product has no cancellation; the exact
    double centring happens on the small matrix in float64 (``finish_grams``)."""
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError("features need a leading batch dimension with at least one example")
    if x.is_complex():
        raise ValueError("complex features are not supported by linear CKA; take .abs() or .real first")
    ct = compute_dtype(dtype, x.dtype)
    x = x.detach()                                      # statistics only: no autograd graph
    n = x.shape[0]
    flat = x.reshape(n, -1)
    p = flat.shape[1]
    K = torch.zeros(n, n, dtype=ct, device=x.device)
    ref_energy = torch.linalg.vector_norm(flat[0], dtype=torch.float64).square() if p else \
        torch.zeros((), dtype=torch.float64, device=x.device)
    step = max(1, min(p, chunk_elems // n))
    ws = workspace.get(n * step, ct, x.device) if workspace is not None else None
    for c in range(0, p, step):
        part = flat[:, c:c + step]
        w = part.shape[1]
        buf = (ws[:n * w] if ws is not None else torch.empty(n * w, dtype=ct, device=x.device)).view(n, w)
        if part.dtype == ct:
            torch.sub(part, part[:1], out=buf)          # the captured features stay untouched
        else:
            buf.copy_(part)
            buf.sub_(buf[:1].clone())
        _add_gram(K, buf)
    K = _mirror_lower(K)
    eps = torch.finfo(x.dtype).eps if x.dtype.is_floating_point else 0.0
    return Gram(K, ref_energy, eps)


def _halved(n: int, width: int, device: torch.device) -> bool:
    """Whether ``_add_gram`` skips the upper-right block: on CPUs, for products large enough
    that two smaller matrix products beat one (measured: 10-20 % faster from 64 x 16384 up)."""
    return device.type == "cpu" and n >= 32 and width >= 8192


def _add_gram(K: torch.Tensor, x: torch.Tensor) -> None:
    """``K += x xᵀ``, where ``_halved`` says so only the lower block triangle (the product is
    symmetric: 3/4 of the multiply-adds; ``_mirror_lower`` fills the rest)."""
    n = x.shape[0]
    if not _halved(n, x.shape[1], x.device):
        K.addmm_(x, x.T)
        return
    h = n // 2
    K[:, :h].addmm_(x, x[:h].T)
    K[h:, h:].addmm_(x[h:], x[h:].T)


def _mirror_lower(K: torch.Tensor) -> torch.Tensor:
    """Exactly symmetric from the lower triangle: a threaded BLAS does not promise that the
    two halves of ``x xᵀ`` (or of its diagonal blocks) round alike, and ``_add_gram`` may not
    have written the upper-right block at all."""
    return torch.tril(K) + torch.tril(K, -1).T


def _double_centre(K: torch.Tensor) -> torch.Tensor:
    """``H K H`` of a (batch of) n x n matrices (float64)."""
    row = K.mean(-1, keepdim=True)
    return K - row - row.mT + row.mean(-2, keepdim=True)


def u_centre(K: torch.Tensor) -> torch.Tensor:
    """U-centring of a Gram matrix, or of a batch (..., n, n) of them (Székely & Rizzo):
    zero diagonal, zero row and column sums (n >= 4). ``<u_centre(K), u_centre(L)> / (n(n-3))``
    is the unbiased HSIC."""
    n = K.shape[-1]
    if n < 4:
        raise ValueError(f"the unbiased estimator needs at least 4 examples, got {n}")
    Kt = K.clone()
    Kt.diagonal(dim1=-2, dim2=-1).zero_()
    s = Kt.sum(-1)
    total = s.sum(-1)
    U = Kt - s[..., :, None] / (n - 2) - s[..., None, :] / (n - 2) + total[..., None, None] / ((n - 1) * (n - 2))
    U.diagonal(dim1=-2, dim2=-1).zero_()
    return U


def normalised_gram(K_centred: torch.Tensor, estimator: str = "unbiased") -> torch.Tensor:
    """The matrix G of a centred Gram matrix (or a batch (..., n, n) of them) such that
    ``HSIC(K, L) = <G_K, G_L>_F``: ``U_K / sqrt(n(n-3))`` (unbiased) or ``HKH / (n-1)``
    (biased; a Gram matrix of centred features is already ``HKH``)."""
    _check_estimator(estimator)
    n = K_centred.shape[-1]
    K64 = K_centred.double()
    if estimator == "unbiased":
        return u_centre(K64) / math.sqrt(n * (n - 3))
    if n < 2:
        raise ValueError("the biased estimator needs at least 2 examples")
    return K64 / (n - 1)


class Finished(NamedTuple):
    """A batch's taps after ``finish_grams``: normalised Gram matrices flattened to rows
    (T, n²), centred energies ``var`` (T,), energy scales (T,) and input epsilons (T,)."""

    rows: torch.Tensor
    var: torch.Tensor
    energy: torch.Tensor
    eps: torch.Tensor


def finish_grams(grams: Sequence[Gram], estimator: str = "unbiased") -> Finished:
    """Centre (``H K H``, float64), normalise and flatten the ``Gram``s of one batch's taps,
    all at once."""
    K = torch.stack([g.matrix for g in grams]).double()
    n = K.shape[-1]
    K = _double_centre(K)
    var = K.diagonal(dim1=-2, dim2=-1).sum(-1)
    energy = var + n * torch.stack([g.ref_energy for g in grams]).to(var.device)
    eps = torch.tensor([g.eps for g in grams], dtype=torch.float64, device=var.device)
    return Finished(normalised_gram(K, estimator).reshape(len(grams), -1), var, energy, eps)


def hsic(x: torch.Tensor, y: torch.Tensor, estimator: str = "unbiased", *,
         dtype: torch.dtype | None = None) -> float:
    """HSIC of one batch of features ``x`` (n, ...) and ``y`` (n, ...) with linear kernels."""
    g = finish_grams([shifted_gram(x, dtype), shifted_gram(y, dtype)], estimator).rows
    return float(g[0] @ g[1])


def linear_cka(x: torch.Tensor, y: torch.Tensor, estimator: str = "unbiased", *,
               dtype: torch.dtype | None = None) -> float:
    """Linear CKA of one batch: ``x`` (n, ...) and ``y`` (n, ...) for the same n examples.

    ``estimator="unbiased"`` (Song et al. HSIC, n >= 4; can be negative) or ``"biased"``
    (Kornblith et al. plug-in HSIC). ``dtype``: precision of the centred Gram products
    (default: float64 for float64 inputs, float32 otherwise). Returns NaN (with a warning)
    when either input is constant over the examples."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must hold the same examples: {x.shape[0]} vs {y.shape[0]} rows")
    m = MinibatchCKA(1, 1, estimator=estimator, dtype=dtype, min_batch=4 if estimator == "unbiased" else 2)
    m.update([x], [y])
    if m.batches == 0:
        raise ValueError(f"the {estimator} estimator needs at least {m.min_batch} examples, got {x.shape[0]}")
    out = m.compute()
    for d in m.diagnostics:
        warnings.warn(d, RuntimeWarning, stacklevel=2)
    return float(out[0, 0])


class MinibatchCKA:
    """Streaming mini-batch linear CKA between ``n_a`` taps of one model and ``n_b`` of another.

    ``update(feats_a, feats_b)`` takes one batch: two lists of tensors (n, ...) for the same
    n examples (any layout: features are flattened per example). ``compute()`` returns the
    ``(n_a, n_b)`` float64 matrix. Batches with fewer than ``min_batch`` examples (4 for
    the unbiased estimator) are skipped with a warning.

    For streaming capture, ``gram(x)`` reduces one tap's batch to its normalised Gram
    matrix as soon as it is produced and ``update_grams(grams_a, grams_b)`` adds a batch
    of those, so features never need to be kept.

    ``dtype`` is the precision of the centred Gram products: None (default) = float64 for
    float64 features and float32 for all others (centred first, see the module notes);
    ``torch.float64`` forces the float64 path. Accumulation is always float64.
    ``state()`` / ``load_state()`` expose the sums, so several processes can merge them
    (``spectrascope.engine.reducers.cka`` all-reduces them under ``torchrun``).
    """

    def __init__(self, n_a: int, n_b: int, estimator: str = "unbiased", *, dtype: torch.dtype | None = None,
                 min_batch: int | None = None, labels_a: Sequence[str] | None = None,
                 labels_b: Sequence[str] | None = None):
        if n_a < 1 or n_b < 1:
            raise ValueError("MinibatchCKA needs at least one tap per side")
        self.n_a, self.n_b = int(n_a), int(n_b)
        self.estimator = _check_estimator(estimator)
        self.dtype = dtype if dtype is None else compute_dtype(dtype, torch.float32)   # validated
        self.workspace = Workspace()
        self.min_batch = int(min_batch) if min_batch is not None else 4
        if estimator == "unbiased" and self.min_batch < 4:
            raise ValueError("the unbiased estimator needs min_batch >= 4")
        self.labels_a = list(labels_a) if labels_a is not None else [f"a{i}" for i in range(self.n_a)]
        self.labels_b = list(labels_b) if labels_b is not None else [f"b{j}" for j in range(self.n_b)]
        if len(self.labels_a) != self.n_a or len(self.labels_b) != self.n_b:
            raise ValueError("labels must match n_a and n_b")
        self.diagnostics: list[str] = []
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        f64 = torch.float64
        self.hsic_xy = torch.zeros(self.n_a, self.n_b, dtype=f64)
        self.hsic_xx = torch.zeros(self.n_a, dtype=f64)
        self.hsic_yy = torch.zeros(self.n_b, dtype=f64)
        # per tap: centred energy, raw energy, worst (largest) input epsilon
        self.var_a = torch.zeros(self.n_a, dtype=f64)
        self.var_b = torch.zeros(self.n_b, dtype=f64)
        self.energy_a = torch.zeros(self.n_a, dtype=f64)
        self.energy_b = torch.zeros(self.n_b, dtype=f64)
        self.eps_a = torch.zeros(self.n_a, dtype=f64)
        self.eps_b = torch.zeros(self.n_b, dtype=f64)
        self.batches = 0
        self.examples = 0
        self.gram_dtypes: set[str] = set()
        self.skipped_batches = 0
        self.skipped_examples = 0

    def _to(self, device) -> None:
        if self.hsic_xy.device != device:
            for name in ("hsic_xy", "hsic_xx", "hsic_yy", "var_a", "var_b", "energy_a", "energy_b", "eps_a", "eps_b"):
                setattr(self, name, getattr(self, name).to(device))

    # ------------------------------------------------------------------ updates
    def accepts(self, n: int) -> bool:
        """Whether a batch of ``n`` examples is used; counts and warns about it otherwise."""
        if n >= self.min_batch:
            return True
        self.skipped_batches += 1
        self.skipped_examples += int(n)
        warnings.warn(f"CKA: skipped a batch of {n} example(s); the {self.estimator} estimator needs at least "
                      f"{self.min_batch} per batch", RuntimeWarning, stacklevel=3)
        return False

    def gram(self, x: torch.Tensor) -> Gram:
        """One tap's batch (n, ...) -> its ``Gram`` (shifted product, reference energy, eps)."""
        return shifted_gram(x, self.dtype, workspace=self.workspace)

    def update(self, feats_a: Sequence[torch.Tensor], feats_b: Sequence[torch.Tensor]) -> bool:
        """Add one batch of features; returns False when the batch was skipped."""
        same = feats_b is feats_a
        feats_a, feats_b = list(feats_a), list(feats_b)
        if len(feats_a) != self.n_a or len(feats_b) != self.n_b:
            raise ValueError(f"expected {self.n_a} + {self.n_b} feature tensors, got {len(feats_a)} + {len(feats_b)}")
        sizes = {int(f.shape[0]) for f in feats_a + feats_b}
        if len(sizes) != 1:
            raise ValueError(f"all features of a batch must hold the same examples; batch sizes {sorted(sizes)}")
        if not self.accepts(sizes.pop()):
            return False
        grams_a = [self.gram(f) for f in feats_a]
        grams_b = grams_a if same else [self.gram(f) for f in feats_b]
        self.update_grams(grams_a, grams_b)
        return True

    def update_grams(self, grams_a: Sequence[Gram], grams_b: Sequence[Gram]) -> None:
        """Add one batch given as ``Gram``s (from ``gram``), taps in order."""
        if len(grams_a) != self.n_a or len(grams_b) != self.n_b:
            raise ValueError(f"expected {self.n_a} + {self.n_b} Gram matrices, got {len(grams_a)} + {len(grams_b)}")
        n = grams_a[0].matrix.shape[0]
        if any(g.matrix.shape != (n, n) for g in list(grams_a) + list(grams_b)):
            raise ValueError("all Gram matrices of a batch must be n x n for the same n")
        self.gram_dtypes.update(str(g.matrix.dtype).replace("torch.", "") for g in list(grams_a) + list(grams_b))
        fa = finish_grams(grams_a, self.estimator)
        fb = fa if grams_b is grams_a else finish_grams(grams_b, self.estimator)
        self._to(fa.rows.device)
        self.hsic_xy += fa.rows @ fb.rows.T
        self.hsic_xx += fa.rows.square().sum(1)
        self.hsic_yy += fb.rows.square().sum(1)
        self.var_a += fa.var
        self.var_b += fb.var
        self.energy_a += fa.energy
        self.energy_b += fb.energy
        self.eps_a = torch.maximum(self.eps_a, fa.eps)
        self.eps_b = torch.maximum(self.eps_b, fb.eps)
        self.batches += 1
        self.examples += int(n)

    # ------------------------------------------------------------------ state (sufficient statistics)
    #: state keys merged over ranks by maximum (all others are sums)
    MAX_KEYS = ("eps_a", "eps_b")
    _TENSORS = ("hsic_xy", "hsic_xx", "hsic_yy", "var_a", "var_b", "energy_a", "energy_b", "eps_a", "eps_b")
    _COUNTS = ("batches", "examples", "skipped_batches", "skipped_examples")

    def state(self) -> dict[str, torch.Tensor]:
        """The running sums (float64 tensors; the counts as a float64 ``counts`` vector)."""
        out = {k: getattr(self, k) for k in self._TENSORS}
        out["counts"] = torch.tensor([float(getattr(self, k)) for k in self._COUNTS], dtype=torch.float64)
        return out

    def load_state(self, state: dict) -> None:
        """Take sums back (e.g. merged over ranks); the inverse of ``state``."""
        for k in self._TENSORS:
            setattr(self, k, state[k].to(torch.float64))
        for k, v in zip(self._COUNTS, state["counts"].tolist()):
            setattr(self, k, int(round(v)))

    # ------------------------------------------------------------------ results
    def totals(self) -> dict[str, torch.Tensor | int]:
        """The accumulated sums and counts of this object (merged beforehand when several
        processes contributed: see ``spectrascope.engine.reducers.cka``)."""
        out: dict = {k: getattr(self, k) for k in self._TENSORS}
        out.update({k: int(getattr(self, k)) for k in self._COUNTS})
        return out

    def compute(self) -> torch.Tensor:
        """The (n_a, n_b) CKA matrix (float64, on the CPU). NaN marks undefined cells; the
        reasons are in ``self.diagnostics``."""
        t = self.totals()
        self.last_totals = t
        self.diagnostics = []
        if t["batches"] == 0:
            self.diagnostics.append(f"no batch with at least {self.min_batch} examples: CKA is undefined")
            return torch.full((self.n_a, self.n_b), float("nan"), dtype=torch.float64)
        xy, xx, yy = t["hsic_xy"], t["hsic_xx"], t["hsic_yy"]
        dead_a = _constant(t["var_a"], t["energy_a"], t["eps_a"], xx)
        dead_b = _constant(t["var_b"], t["energy_b"], t["eps_b"], yy)
        self.diagnostics += _dead_diagnostics("A", self.labels_a, dead_a, t["var_a"], t["energy_a"], t["eps_a"],
                                              t["examples"])
        self.diagnostics += _dead_diagnostics("B", self.labels_b, dead_b, t["var_b"], t["energy_b"], t["eps_b"],
                                              t["examples"])
        out = xy / torch.sqrt(xx[:, None] * yy[None, :])
        out[dead_a, :] = float("nan")
        out[:, dead_b] = float("nan")
        return out.cpu()

    def __repr__(self) -> str:
        return (f"MinibatchCKA({self.n_a}x{self.n_b}, estimator={self.estimator!r}, batches={self.batches}, "
                f"examples={self.examples}, skipped_batches={self.skipped_batches})")


def rounding_level(energy, eps):
    """Centred energy below which features are constant up to the rounding of their dtype."""
    return (4 * eps) ** 2 * energy


def _dead_diagnostics(side: str, labels, dead, var, energy, eps, examples: int) -> list[str]:
    """One line per constant tap of one side, naming it and why its row/column is NaN."""
    out = []
    what = "row" if side == "A" else "column"
    for i in torch.nonzero(dead).flatten().tolist():
        if var[i] == 0:
            why = f"is constant over all {examples} examples (zero variance)"
        elif var[i] <= rounding_level(energy[i], eps[i]):
            why = (f"is constant over all {examples} examples up to rounding (variance "
                   f"{float(var[i]):.3g} vs energy {float(energy[i]):.3g})")
        else:
            why = "has a zero self-HSIC (constant features)"
        out.append(f"tap {labels[i]!r} of model {side} {why}: its CKA {what} is NaN (written as null)")
    return out


def _constant(var: torch.Tensor, energy: torch.Tensor, eps: torch.Tensor, self_hsic: torch.Tensor) -> torch.Tensor:
    """Taps whose features do not vary over the examples beyond the rounding of their dtype."""
    return (var <= rounding_level(energy, eps)) | (self_hsic <= 0) | ~torch.isfinite(self_hsic)



class TorchCKACompat:
    """torch-cka 0.21's mini-batch CKA computation, fed by our capture (engine ``torch-cka``).

    Per batch and tap: ``X = feat.flatten(1)`` (float32, uncentred), ``K = X Xᵀ`` with a
    zeroed diagonal; ``torch_cka.CKA._HSIC`` for every (K, K), (K, L), (L, L); the sums
    are divided by ``num_batches`` and accumulated in a float32 ``(N, M, 3)`` tensor as
    torch-cka does; the result is ``xy / (sqrt(xx) · sqrt(yy))``. ``HSIC(L, L)`` is
    computed once per batch instead of once per pair (same values). Where torch-cka
    would abort on a zero self-HSIC, the row/column is NaN with a diagnostic."""

    name = "torch-cka"
    _COUNTS = ("batches", "examples", "skipped_batches", "skipped_examples")
    MAX_KEYS: tuple = ()

    def __init__(self, n_a: int, n_b: int, estimator: str = "unbiased", *, num_batches: int = 1,
                 labels_a: Sequence[str] | None = None, labels_b: Sequence[str] | None = None, **_ignored):
        if estimator != "unbiased":
            raise OptionError("the torch-cka engine implements only the unbiased estimator", option="--estimator")
        import torch_cka  # a dependency, imported lazily: it pulls in matplotlib
        self._hsic_fn = torch_cka.CKA._HSIC
        self.n_a, self.n_b = n_a, n_b
        self.estimator = estimator
        self.num_batches = max(1, int(num_batches))
        self.min_batch = 4
        self.labels_a = list(labels_a or [f"a{i}" for i in range(n_a)])
        self.labels_b = list(labels_b or [f"b{j}" for j in range(n_b)])
        self.hsic_matrix = torch.zeros(n_a, n_b, 3)
        self.gram_dtypes = {"float32"}
        self.batches = self.examples = self.skipped_batches = self.skipped_examples = 0
        self.diagnostics: list[str] = []

    def accepts(self, n: int) -> bool:
        if n >= self.min_batch:
            return True
        self.skipped_batches += 1
        self.skipped_examples += int(n)
        warnings.warn(f"CKA: skipped a batch of {n} example(s) (torch-cka would divide by zero below 4)",
                      RuntimeWarning, stacklevel=3)
        return False

    def gram(self, x: torch.Tensor) -> torch.Tensor:
        X = x.flatten(1)
        if X.dtype != torch.float32:  # torch-cka builds float32 ones vectors; other dtypes break it
            X = X.float()
        K = X @ X.t()
        K.fill_diagonal_(0.0)
        return K

    def update(self, feats_a: Sequence[torch.Tensor], feats_b: Sequence[torch.Tensor]) -> bool:
        if not self.accepts(int(feats_a[0].shape[0])):
            return False
        self.update_grams([self.gram(f) for f in feats_a], [self.gram(f) for f in feats_b])
        return True

    def update_grams(self, grams_a: Sequence[torch.Tensor], grams_b: Sequence[torch.Tensor]) -> None:
        shim = SimpleNamespace(device=grams_a[0].device)
        nb = self.num_batches
        h = self.hsic_matrix
        yy = [self._hsic_fn(shim, L, L) for L in grams_b]
        for i, K in enumerate(grams_a):
            h[i, :, 0] += self._hsic_fn(shim, K, K) / nb
            for j, L in enumerate(grams_b):
                if K.shape != L.shape:
                    raise ValueError(f"feature shape mismatch {tuple(K.shape)} vs {tuple(L.shape)}")
                h[i, j, 1] += self._hsic_fn(shim, K, L) / nb
                h[i, j, 2] += yy[j] / nb
        self.batches += 1
        self.examples += int(grams_a[0].shape[0])

    def state(self) -> dict[str, torch.Tensor]:
        counts = torch.tensor([float(getattr(self, k)) for k in self._COUNTS], dtype=torch.float64)
        return {"hsic_matrix": self.hsic_matrix, "counts": counts}

    def load_state(self, state: dict) -> None:
        self.hsic_matrix = state["hsic_matrix"].to(torch.float32)
        for k, v in zip(self._COUNTS, state["counts"].tolist()):
            setattr(self, k, int(round(v)))

    def totals(self) -> dict:
        h = self.hsic_matrix
        return {"hsic_xy": h[:, :, 1].double(), "hsic_xx": h[:, 0, 0].double(), "hsic_yy": h[0, :, 2].double(),
                "hsic_matrix": h, **{k: int(getattr(self, k)) for k in self._COUNTS}}

    def compute(self) -> torch.Tensor:
        t = self.totals()
        self.last_totals = t
        h = t["hsic_matrix"]
        self.diagnostics = []
        out = (h[:, :, 1] / (h[:, :, 0].sqrt() * h[:, :, 2].sqrt())).double()
        for side, labels, self_hsic in (("A", self.labels_a, h[:, 0, 0]), ("B", self.labels_b, h[0, :, 2])):
            for i, v in enumerate(self_hsic.tolist()):
                if v > 0:
                    continue
                what = "row" if side == "A" else "column"
                self.diagnostics.append(f"torch-cka: self-HSIC of tap {labels[i]!r} of model {side} is {v:.3g} "
                                        f"(constant tap or float32 cancellation): its {what} is NaN, written as "
                                        "null (torch-cka itself aborts here)")
                if side == "A":
                    out[i, :] = float("nan")
                else:
                    out[:, i] = float("nan")
        return out


def make_engine(engine: str, n_a: int, n_b: int, estimator: str = "unbiased", *, num_batches: int = 1,
                dtype: torch.dtype | None = None, labels_a=None, labels_b=None):
    """``MinibatchCKA`` (engine ``spectrascope``) or ``TorchCKACompat`` (``torch-cka``)."""
    _check_estimator(estimator)
    if engine == "spectrascope":
        return MinibatchCKA(n_a, n_b, estimator, dtype=dtype, labels_a=labels_a, labels_b=labels_b)
    if engine == "torch-cka":
        return TorchCKACompat(n_a, n_b, estimator, num_batches=num_batches, labels_a=labels_a, labels_b=labels_b)
    raise OptionError(f"must be one of {', '.join(ENGINES)}, not {engine!r}", option="--engine")
