"""Packed tree ensembles compiled to machine code, one function per tree (llvmlite).

:mod:`metalsm.models._trees` walks every tree through one loop over node arrays:
one branch instruction serves every node of every tree, so the CPU's branch
predictor cannot learn any node's habits, and each step loads the node's feature,
threshold and child. Here each tree becomes its own code: a node is a compare of one
input column with a constant and a jump, so the feature index and threshold are
immediates and every node has a branch of its own, which neighbouring raster
cells (similar values) take the same way. The code is LLVM IR written as text,
compiled by llvmlite (the LLVM binding numba already installs; no C compiler).

Layout: tree ``k`` is ``t{k}(rows, out, n)``, a loop over ``n`` rows that walks the
tree and adds the leaf's value to ``out[i]``; a part's entry ``predict_{p}`` runs
blocks of :data:`_BLOCK_ROWS` rows through its trees in order, so a tree's code
stays in cache while a block passes, and ``out`` receives the trees' values in the
same order as the packed walk (same sums, bit for bit). Large ensembles are split
into parts of at most :data:`_PART_NODES` nodes (bounded compile memory), all
loaded into one execution engine.

The comparisons are the libraries' own, as in :mod:`~metalsm.models._trees`: a
forest reads float32 rows, and ``x <= t`` with float64 ``t`` holds exactly when
``x <= t32``, ``t32`` the largest float32 not above ``t``; the rows and ``t32`` are
then turned into int32 keys of the same order (:func:`float32_keys`), so a node is
one compare of memory with an immediate and a jump. LightGBM compares float64 values
with float64 thresholds, which for a float32 value is the same test, so rows whose
values are all float32 (raster cells) take the same int32 path; other rows take code
that compares float64 (compiled when first needed). Compiling takes seconds (LLVM's fast instruction
selection, ``opt_level=0``; LLVM's optimising levels cost 10-40 times longer on the
forests' large functions, ~5 s on LightGBM's 300 small trees for 1.3-1.4 times
faster code), so callers compile where a prediction is large enough to repay it.
The machine code travels in pickles (a Dask worker loads it; compiled again only on
a different CPU). Any failure to compile yields ``None`` and the
caller keeps its other path.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from typing import Any

import numpy as np

from metalsm.models._trees import CompiledTrees

log = logging.getLogger(__name__)

#: Rows per block: every tree of a part walks a block before the next block starts.
_BLOCK_ROWS = 1_024
#: Nodes per compiled part (an LLVM module): bounds the memory of one compilation.
_PART_NODES = 120_000
#: Set to ``0`` to never compile trees natively (the packed walk or the library predicts).
ENV_SWITCH = "METALSM_NATIVE_TREES"

_LLVM_LOCK = threading.RLock()  # _load may compile again while holding it
_ENTRY = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


def native_enabled() -> bool:
    """Whether native compilation is allowed (environment switch :data:`ENV_SWITCH`)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def _hex_doubles(values: np.ndarray) -> list[str]:
    """LLVM's exact hexadecimal spelling of float64 constants."""
    bits = np.ascontiguousarray(values, dtype=np.float64).view(np.uint64).tolist()
    return [f"0x{b:016X}" for b in bits]


def _float32_floor(threshold: np.ndarray) -> np.ndarray:
    """Largest float32 ``<= threshold`` (as float64): for float32 ``x``,
    ``x <= threshold`` exactly when ``x <= _float32_floor(threshold)``."""
    down = threshold.astype(np.float32)
    above = down.astype(np.float64) > threshold
    down[above] = np.nextafter(down[above], np.float32(-np.inf))
    return down.astype(np.float64)


def float32_keys(values: np.ndarray) -> np.ndarray:
    """int32 keys in the order of float32 ``values`` (not NaN): ``a <= b`` exactly when
    ``key(a) <= key(b)``. A float's sign-magnitude bits read as an integer sort the
    positives; flipping the magnitude bits of the negatives sorts them below, in reverse.
    ``-0.0`` is read as ``0.0`` first (the two compare equal as floats)."""
    bits = (np.asarray(values, dtype=np.float32) + np.float32(0.0)).view(np.int32)
    return np.where(bits < 0, bits ^ np.int32(0x7FFFFFFF), bits).astype(np.int32)


def _tree_ir(k: int, packed: CompiledTrees, lo: int, hi: int, thresholds: list[str],
             leaves: list[str], ty: str) -> str:
    """IR of tree ``k`` (packed nodes ``lo:hi``; ``thresholds``/``leaves``: its constants)
    as a loop over rows around the tree's branches."""
    compare = "icmp sle i32" if ty == "i32" else f"fcmp ole {ty}"
    right = (packed.right[lo:hi] - lo).tolist()
    feature = packed.feature[lo:hi].tolist()
    body, incoming = [], []
    for j, (r, f) in enumerate(zip(right, feature, strict=True)):
        if r == j:  # leaf
            body.append(f"n{j}:\nbr label %add")
            incoming.append(f"[{leaves[j]},%n{j}]")
        else:
            body.append(f"n{j}:\n%p{j}=getelementptr inbounds {ty},ptr %r,i64 {f}\n"
                        f"%x{j}=load {ty},ptr %p{j}\n%c{j}={compare} %x{j},{thresholds[j]}\n"
                        f"br i1 %c{j},label %n{j + 1},label %n{r}")
    return "\n".join([
        f"define internal void @t{k}(ptr noalias %X,ptr noalias %out,i64 %n) noinline nounwind {{",
        "entry:\nbr label %row",
        "row:\n%i=phi i64 [0,%entry],[%i1,%add]",
        f"%base=mul i64 %i,{packed.n_features}",
        f"%r=getelementptr inbounds {ty},ptr %X,i64 %base",
        "br label %n0",
        *body,
        "add:\n%v=phi double " + ",".join(incoming),
        "%op=getelementptr inbounds double,ptr %out,i64 %i",
        "%o=load double,ptr %op\n%s=fadd double %o,%v\nstore double %s,ptr %op",
        "%i1=add i64 %i,1\n%more=icmp slt i64 %i1,%n\nbr i1 %more,label %row,label %exit",
        "exit:\nret void\n}",
    ])


def _part_ir(part: int, packed: CompiledTrees, trees: range, keys: bool) -> str:
    """One LLVM module: trees ``trees`` and the entry ``predict_{part}`` over blocks of rows
    (``keys``: rows of int32 keys of float32 values, else float64 rows)."""
    ty = "i32" if keys else "double"
    first = int(packed.roots[trees[0]])
    threshold = packed.threshold[first:_tree_end(packed, trees[-1])]
    threshold = np.where(np.isfinite(threshold), threshold, 0.0)  # leaves' -inf: unused
    if keys:  # from node ``first`` on
        thresholds = float32_keys(_float32_floor(threshold)).astype(str).tolist()
    else:
        thresholds = _hex_doubles(threshold)
    leaves = _hex_doubles(packed.value[first:first + len(thresholds)])
    functions = []
    for k in trees:
        lo, hi = int(packed.roots[k]), _tree_end(packed, k)
        functions.append(_tree_ir(k, packed, lo, hi, thresholds[lo - first:hi - first],
                                  leaves[lo - first:hi - first], ty))
    calls = "\n".join(f"call void @t{k}(ptr %xb,ptr %ob,i64 %m)" for k in trees)
    block = _BLOCK_ROWS
    functions.append(f"""define void @predict_{part}(ptr %X,ptr %out,i64 %n) nounwind {{
entry:
%empty=icmp sle i64 %n,0
br i1 %empty,label %exit,label %block
block:
%lo=phi i64 [0,%entry],[%lo1,%block]
%rest=sub i64 %n,%lo
%small=icmp slt i64 %rest,{block}
%m=select i1 %small,i64 %rest,i64 {block}
%off=mul i64 %lo,{packed.n_features}
%xb=getelementptr inbounds {ty},ptr %X,i64 %off
%ob=getelementptr inbounds double,ptr %out,i64 %lo
{calls}
%lo1=add i64 %lo,{block}
%more=icmp slt i64 %lo1,%n
br i1 %more,label %block,label %exit
exit:
ret void
}}""")
    return "\n\n".join(functions)


def _tree_end(packed: CompiledTrees, k: int) -> int:
    return int(packed.roots[k + 1]) if k + 1 < packed.n_trees else int(packed.feature.size)


def _parts(packed: CompiledTrees) -> list[range]:
    """Consecutive runs of trees with at most :data:`_PART_NODES` nodes each (>= 1 tree)."""
    parts, start, nodes = [], 0, 0
    for k in range(packed.n_trees):
        size = _tree_end(packed, k) - int(packed.roots[k])
        if k > start and nodes + size > _PART_NODES:
            parts.append(range(start, k))
            start, nodes = k, 0
        nodes += size
    parts.append(range(start, packed.n_trees))
    return parts


def _host() -> tuple[str, str]:
    import llvmlite.binding as llvm

    return llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()


def _target_machine(opt_level: int) -> Any:
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    cpu, features = _host()
    return llvm.Target.from_default_triple().create_target_machine(
        cpu=cpu, features=features, opt=opt_level, codemodel="large")


class NativeTrees:
    """A :class:`~metalsm.models._trees.CompiledTrees` ensemble as machine code.

    Same ``positive_proba`` as the packed trees (and the same numbers, bit for bit);
    ``compile_seconds`` is what compiling cost. Two variants: rows as int32 keys of
    float32 values (forests always; LightGBM whenever every value is a float32, as
    raster cells are: 1.3 times faster than comparing doubles, measured) and float64
    rows (LightGBM otherwise, compiled on first need). Build with :func:`compile_native`.
    """

    def __init__(self, packed: CompiledTrees, opt_level: int) -> None:
        self.packed = packed
        self.opt_level = opt_level
        self.objects: dict[bool, list[bytes]] = {}  # keys variant? -> object code per part
        self.host = _host()
        self.compile_seconds = 0.0
        self._entries: dict[bool, list[Any]] = {}
        self._engines: list[Any] = []

    @property
    def n_trees(self) -> int:
        return self.packed.n_trees

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_entries"], state["_engines"] = {}, []  # machine code travels, not engines
        return state

    def _load(self, keys: bool) -> list[Any]:
        """The parts' entry points of a variant, compiled if missing (or made for another
        CPU) and loaded into this process once."""
        if keys not in self._entries:
            import llvmlite.binding as llvm

            with _LLVM_LOCK:
                if self.host != _host():  # unpickled on another CPU: code for this one
                    self.objects, self.host = {}, _host()
                if keys not in self.objects:
                    started = time.perf_counter()
                    self.objects[keys] = _emit_objects(self.packed, self.opt_level, keys)
                    self.compile_seconds += time.perf_counter() - started
                if keys not in self._entries:
                    engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""),
                                                        _target_machine(self.opt_level))
                    for code in self.objects[keys]:
                        engine.add_object_file(llvm.ObjectFileRef.from_data(code))
                    engine.finalize_object()
                    self._engines.append(engine)
                    self._entries[keys] = [
                        _ENTRY(engine.get_function_address(f"predict_{p}"))
                        for p in range(len(self.objects[keys]))]
        return self._entries[keys]

    def positive_proba(self, X: np.ndarray, n_threads: int | None = None) -> np.ndarray:
        """P(class 1) for every row of the encoded feature matrix ``X`` (finite values)."""
        from metalsm.models._trees import run_in_tasks

        rows = self.packed.rows(X)
        single = rows.astype(np.float32)
        keys = self.packed.float32_inputs or bool(np.array_equal(single, rows))
        try:
            entries = self._load(keys)
        except Exception as error:  # noqa: BLE001 - the float64 variant failed to compile
            log.warning("native tree compilation failed (%s: %s); using the packed walk",
                        type(error).__name__, error)
            return self.packed.positive_proba(X, n_threads)
        if keys:
            rows = float32_keys(single)
        total = np.zeros(rows.shape[0])
        width = rows.shape[1] * rows.itemsize

        def walk(lo: int, hi: int) -> None:  # ctypes drops the GIL: tasks run in parallel
            for entry in entries:
                entry(rows.ctypes.data + lo * width, total.ctypes.data + lo * 8, hi - lo)

        run_in_tasks(walk, rows.shape[0], n_threads)
        return self.packed.combine_leaves(total)


def _emit_objects(packed: CompiledTrees, opt_level: int, keys: bool) -> list[bytes]:
    """Object code of every part of ``packed`` for this CPU."""
    import llvmlite.binding as llvm

    with _LLVM_LOCK:
        machine = _target_machine(opt_level)
        objects = []
        for p, trees in enumerate(_parts(packed)):
            module = llvm.parse_assembly(_part_ir(p, packed, trees, keys))
            module.triple = llvm.get_process_triple()
            module.data_layout = str(machine.target_data)
            module.verify()
            objects.append(machine.emit_object(module))
            del module
        return objects


def compile_native(packed: CompiledTrees | None, opt_level: int = 0) -> NativeTrees | None:
    """``packed`` compiled to machine code, or ``None`` (switched off, llvmlite missing,
    or LLVM failed: the reason is logged) so the caller keeps its other path."""
    if packed is None or not native_enabled():
        return None
    native = NativeTrees(packed, opt_level)
    try:  # the keys variant: what maps use (raster cells are float32)
        native._load(keys=True)
    except Exception as error:  # noqa: BLE001 - any compiler failure means: keep the other path
        log.warning("native tree compilation failed (%s: %s); using the fallback predictor",
                    type(error).__name__, error)
        return None
    return native


