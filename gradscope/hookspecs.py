"""Every hook a gradscope plugin can implement, in the order a run calls them.

Plugins run in the recorder thread, on host-side data (plain Python values and networkx
graphs), never on the training thread. A hook that raises is isolated: its error becomes a
``plugin-error`` finding naming the plugin, and that plugin is switched off for the rest of the
run; so is a hook that returns something other than what its docstring says. Hooks that return
findings return a list of `gradscope.Finding` (or None for none).

Call order (pluggy's, decided in `gradscope.plugins.load`): gradscope's built-in checks first,
then third-party plugins, each group in entry-point name order; ``@gradscope.hookimpl(tryfirst=
True)`` or ``trylast=True`` moves an implementation before or after all of them, and hook
wrappers (``wrapper=True``) run around the whole call and see every result.

Implement hooks with ``@gradscope.hookimpl`` on a module or an object, and register it through
the ``gradscope.plugins`` entry-point group (see the README).
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("gradscope")


# -- set-up: once per run, on the thread that starts the run ---------------------------------
@hookspec
def gradscope_configure(config):
    """Read settings before the run starts.

    `config` is a `gradscope.Config`: ``config.get(check, key, default)`` returns the value set
    on the command line (``--set check.key=value``) or in ``[tool.gradscope.<check>]`` of the
    project's pyproject.toml, else `default`. Called on the thread that starts the run, before
    any training step. Returns nothing. A bad setting value raises `gradscope.errors.
    GradscopeError` from ``config.get``, which stops the run before it starts with a one-line
    error; any other exception switches the plugin off.
    """


@hookspec
def gradscope_statistics():
    """Ask the tracer for extra statistics. Return a list of `gradscope.TailCount` and
    `gradscope.DeadUnits`.

    A `TailCount(name, module_types, low, high)` makes the tracer count, for every output of a
    module whose class name is in `module_types`, the elements outside the open interval
    (low, high); a `DeadUnits(name, module_types, unit_dim)` counts the units (slices along
    `unit_dim`) that never rise above zero. Counts arrive as ``step.tails[(module, call,
    name)] = (count, total)``. Called once, before training starts. This is the only way a
    plugin shapes what the training thread computes.
    """


# -- every step: recorder thread --------------------------------------------------------------
@hookspec
def gradscope_graph(step, graph, run):
    """Judge an autograd graph. Return findings (or None).

    `graph` is the `networkx.DiGraph` of `gradscope.autograd_graph` (with ``scope`` on each
    node; custom ``autograd.Function`` classes met are in ``graph.graph["functions"]`` by
    qualified name), recorded at step `step` (an int). Called in the recorder thread just
    before `gradscope_step` of the same step, for the steps where the graph was walked: the
    first step, every ``graph_every`` steps, and whenever the shape of the module calls changes.
    `run` is the `gradscope.RunView`, as for `gradscope_step`.
    """


@hookspec
def gradscope_step(step, run):
    """Judge one step. Return findings (or None).

    `step` is a `gradscope.StepData` (statistics, updates, module calls, zero_grad calls,
    modules in eval mode, learning rates, and the autograd graph when it was walked this step);
    its `stats` is a read-only sequence of `gradscope.Stat` and its `updates` a read-only
    mapping of parameter name to `gradscope.Update`, each made as it is read. A large model has
    thousands a step: read what you need, ``step.stats.of_kind("grad")``,
    ``step.stats.nonfinite()`` (rows holding NaN or infinity), ``stats.column("norm")``,
    ``step.updates.column("delta")`` (in the order of the names), rather than every row.
    `run` is a `gradscope.RunView` with the modules, parameters and optimizers seen so far.
    Called in the recorder thread once per recorded step, in step order.
    """


# -- end of run: recorder thread ----------------------------------------------------------
@hookspec
def gradscope_run_end(run):
    """Judge the whole run once it has ended (normally or not). Return findings (or None).

    `run` is the `gradscope.RunView` of the whole run. Called in the recorder thread after the
    last step was judged, before the record closes.
    """


# -- after the fact: the records of every rank of a distributed job ------------------------------
@hookspec
def gradscope_ranks(records):
    """Judge the ranks of one torch.distributed job together, from their records. Return findings
    (or None).

    `records` maps each rank to its `gradscope.Record` (every rank whose record was given; a
    rank may be missing). Called by ``gradscope report`` with several records, on the main
    thread of the process that writes the report, after the runs ended: the place for cross-rank
    checks when the ranks ran on machines that do not share a filesystem.
    """
