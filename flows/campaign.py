"""The ``campaign`` flow: rounds until a target error, a DFT budget, a round limit, or the controller says stop.

``campaign(config_path=...)`` starts a campaign from a TOML file; ``campaign(campaign_id=...)`` resumes one
from the store (finished labels and trained members are not recomputed). Pools attached to a running
campaign join its next round.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger

from sapis.errors import ConfigError
from sapis.flows.artifacts import publish_campaign
from sapis.flows.config import CampaignConfig
from sapis.flows.round import active_learning_round, store_for
from sapis.storage import Store
from sapis.tasks.explore import candidates_at_most
from sapis.tasks.label_step import periodic_pool_problem

if TYPE_CHECKING:
    from ase import Atoms


def create_campaign(store: Store, cfg: CampaignConfig, source: str | None = None) -> int:
    """Check the campaign (:func:`check_campaign`), then create its row and attach its pools."""
    check_campaign(store, cfg, source or f"campaign {cfg.name!r}")
    cid = store.create_campaign(cfg.name, cfg.model_dump(mode="json"))
    for p in cfg.pools:
        store.attach_pool(cid, p)
    return cid


def check_campaign(
    store: Store, cfg: CampaignConfig, source: str = "campaign config", deployment: bool = True, new: bool = True
) -> None:
    """Everything a campaign can know before it starts, checked before any row is written.

    Pools exist, hold no periodic structures (labels are molecular PySCF calculations), give each chemical
    formula one charge and spin (the model has no charge or spin input), and every element they contain has
    functions in the basis (and auxiliary basis); a new campaign's label budget covers round 0 (skipped with
    ``new=False``: a campaign already started has its round 0 behind or under way); a ``work-pool`` label mode
    needs its deployment registered (``sapis deploy``; skipped with ``deployment=False``). A problem raises
    ConfigError: one line naming ``source`` and the field.
    """
    known = {p.name for p in store.pools()}
    missing = [p for p in cfg.pools if p not in known]
    if missing:
        raise ConfigError(
            f"{source}: pools: unknown pool(s) {', '.join(missing)}; submit them first with `sapis pool submit`"
        )
    elements: dict[str, set[str]] = {}
    kinds: dict[tuple[object, ...], tuple[str, int, Atoms]] = {}  # one structure per formula, charge and spin
    sizes: list[int] = []  # atoms per structure
    for pool in cfg.pools:
        members = store.pool_atoms(pool)
        sizes += [len(a) for a in members]
        problem = periodic_pool_problem(pool, members)
        if problem is not None:
            raise ConfigError(f"{source}: pools: {problem}")
        for i, atoms in enumerate(members):
            for symbol in set(atoms.get_chemical_symbols()):
                elements.setdefault(symbol, set()).add(pool)
            key = (atoms.get_chemical_formula(), atoms.info.get("charge", 0), atoms.info.get("multiplicity"))
            kinds.setdefault(key, (pool, i, atoms))
    _check_one_state_per_formula(kinds, source)
    if new:
        _check_round0_budget(cfg, source)
    _check_enough_candidates(cfg, sizes, source)
    try:
        cfg.level.check_elements(set(elements))
    except ConfigError as exc:
        pools = sorted({p for ps in elements.values() for p in ps})
        raise ConfigError(f"{source}: level.basis: {exc} (in pool {', '.join(map(repr, pools))})") from None
    if cfg.model.baseline != "none":
        _check_baseline(cfg.model.baseline, list(kinds.values()), source)
    if cfg.ensemble.pretrained is not None:
        _check_pretrained(cfg, set(elements), source)
    if deployment and cfg.label.mode == "work-pool":
        _check_label_deployment(cfg, source)


def _check_round0_budget(cfg: CampaignConfig, source: str) -> None:
    """Round 0 labels its seed set and its test set whatever ``targets.max_labels`` says (the budget caps the
    later rounds only), so a budget below both would be overspent before the first model."""
    need = cfg.select.seed_size + cfg.select.test_size
    if cfg.targets.max_labels < need:
        raise ConfigError(
            f"{source}: targets.max_labels: {cfg.targets.max_labels} is below the {need} labels round 0 takes "
            f"(select.seed_size {cfg.select.seed_size} + select.test_size {cfg.select.test_size}): raise "
            "targets.max_labels or lower select.seed_size / select.test_size"
        )


MIN_ROUND0_CANDIDATES = 3  # round 0 holds one out for the test set and needs two training labels for an ensemble


def _check_enough_candidates(cfg: CampaignConfig, sizes: list[int], source: str) -> None:
    """Round 0 can propose enough candidates to pick a test set and at least two training labels from.

    Counted as an upper bound (the pools' structures times what round 0's explorers can propose from each, before
    filtering), so only a campaign that cannot run is refused: pools of single atoms, or MD too short to keep a frame.
    """
    if sizes and max(sizes) < 2:
        raise ConfigError(
            f"{source}: pools: {', '.join(cfg.pools)} hold only single atoms: an interatomic potential learns from "
            "structures of two or more atoms (give isolated-atom energies to `sapis model train --isolated-atoms`)"
        )
    # as the round: no model to run committee MD in round 0, where xTB MD stands in for a committee-only campaign
    passes = [e for e in cfg.explore.explorers if e != "committee"] or ["xtb"]
    configs = [cfg.explore.for_explorer(e, seed=0, round_index=0, trust_hi=None) for e in passes]  # once per pass
    most = sum(candidates_at_most(c, n) for c in configs for n in sizes)
    most = min(most, cfg.explore.max_candidates)
    if most < MIN_ROUND0_CANDIDATES:
        raise ConfigError(
            f"{source}: explore: round 0 can propose at most {most} candidate(s) from {len(sizes)} structure(s) "
            f"with explorers {passes} (steps {cfg.explore.steps}, interval {cfg.explore.interval}, "
            f"{len(cfg.explore.temperatures)} temperature(s)); it needs {MIN_ROUND0_CANDIDATES}: raise explore.steps, "
            "lower explore.interval or add temperatures"
        )


# fields of a model config outside the trunk it learns: a pre-trained trunk fits whatever they are
_NOT_SHAPING = ("baseline", "zbl", "zbl_radius_scale")


def _check_pretrained(cfg: CampaignConfig, elements: set[str], source: str) -> None:
    """``ensemble.pretrained`` is a checkpoint of the campaign's architecture and capacity on the pools' elements,
    so round 0 takes every trunk tensor from it (a mismatch would load a few tensors and train the rest from
    scratch without a word)."""
    from ase.data import chemical_symbols

    from sapis.errors import SapisError
    from sapis.models.checkpoint import load_checkpoint

    path = cfg.ensemble.pretrained
    try:
        spec = load_checkpoint(Path(str(path)))["spec"]
    except SapisError as exc:
        raise ConfigError(f"{source}: ensemble.pretrained: {exc}") from None
    own, theirs = cfg.model.model_dump(mode="json"), dict(spec.get("config", {}))
    differ = [k for k in own if k not in _NOT_SHAPING and k in theirs and own[k] != theirs[k]]
    if differ:
        was = ", ".join(f"{k}={theirs[k]!r}" for k in differ)
        want = ", ".join(f"{k}={own[k]!r}" for k in differ)
        raise ConfigError(
            f"{source}: ensemble.pretrained: {path} is a model with {was}, the campaign's [model] has {want}: "
            "pre-train with the campaign's architecture and size"
        )
    trained = {chemical_symbols[int(z)] for z in spec.get("elements", [])}
    if trained != elements:
        raise ConfigError(
            f"{source}: ensemble.pretrained: {path} was trained on {', '.join(sorted(trained))}, the pools hold "
            f"{', '.join(sorted(elements))}: pre-train on structures with the pools' elements"
        )


def _check_one_state_per_formula(kinds: dict[tuple[object, ...], tuple[str, int, Atoms]], source: str) -> None:
    """A formula met at two charges or spins (OH and OH-, triplet and singlet O2) would be learnt as one
    potential energy surface with two energies at every geometry: refuse it before the DFT is paid for."""
    seen: dict[str, tuple[object, ...]] = {}
    for key in kinds:
        first = seen.setdefault(str(key[0]), key)
        if first != key:
            (p1, i1, _), (p2, i2, _) = kinds[first], kinds[key]
            raise ConfigError(
                f"{source}: pools: {key[0]} has charge {first[1]}, multiplicity {first[2]} in pool {p1!r} "
                f"structure {i1} but charge {key[1]}, multiplicity {key[2]} in pool {p2!r} structure {i2}; "
                "the model has no charge or spin input: give each state its own campaign"
            )


def _check_baseline(baseline: str, structures: list[tuple[str, int, Atoms]], source: str) -> None:
    """The Δ baseline runs on one structure of each kind in the pools (GFN2-xTB has no parameters beyond Rn,
    and its SCF can fail on odd spin states): better said now than after the first DFT labels."""
    from sapis.errors import InputError
    from sapis.models.priors import baseline_energy_forces

    for pool, i, atoms in structures:
        try:
            baseline_energy_forces([atoms], baseline)
        except InputError as exc:
            problem = exc.problem.split(";")[0]
            raise ConfigError(
                f"{source}: model.baseline: {problem} on pool {pool!r} structure {i} "
                f'({atoms.get_chemical_formula()}); set model.baseline = "none" to learn the labels directly'
            ) from None


def _check_label_deployment(cfg: CampaignConfig, source: str) -> None:
    """The labelling deployment is registered on the Prefect API, on the configured DFT pool."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from sapis.flows.label import LABEL_DEPLOYMENT

    try:
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(LABEL_DEPLOYMENT)
    except ObjectNotFound:
        raise ConfigError(
            f"{source}: label.mode: 'work-pool' needs the deployment {LABEL_DEPLOYMENT} on the Prefect server; "
            f"run `sapis deploy --dft-pool {cfg.label.work_pool}` first (or set label.mode = 'local')"
        ) from None
    except Exception as exc:  # an unreachable or misconfigured API: say so in one line
        raise ConfigError(
            f"{source}: label.mode: 'work-pool' needs a Prefect API, which did not answer "
            f"({type(exc).__name__}: {exc}); start it or set label.mode = 'local'"
        ) from None
    if deployment.work_pool_name != cfg.label.work_pool:
        raise ConfigError(
            f"{source}: label.work_pool: {cfg.label.work_pool!r}, but {LABEL_DEPLOYMENT} runs on "
            f"{deployment.work_pool_name!r}; run `sapis deploy --dft-pool {cfg.label.work_pool}`"
        )


def stop_reason(store: Store, campaign_id: int, cfg: CampaignConfig) -> str | None:
    """Why the campaign should not run another round, or None to go on.

    The target error and the label, DFT and compute budgets are the scaling controller's stop rules
    (:func:`sapis.tasks.scaling.decide`, which reads ``[targets]`` through
    :func:`sapis.tasks.scaling_step.controller_config`); the campaign adds only its round limit.
    """
    rounds = [r for r in store.rounds(campaign_id) if r.status == "done"]
    if not rounds:
        return None
    last = rounds[-1]
    if last.decision == "stop":
        return f"the controller decided to stop: {(last.evidence or {}).get('reason', '')}"
    if len(rounds) >= cfg.targets.max_rounds:
        return f"round limit reached: {len(rounds)} rounds"
    return None


@flow(name="campaign", log_prints=True)
def campaign(
    campaign_id: int | None = None, config_path: str | None = None, database_url: str | None = None
) -> dict[str, Any]:
    """Run a campaign to its end; returns its id, rounds and why it stopped."""
    log = get_run_logger()
    store = store_for(database_url)
    if campaign_id is None:
        if config_path is None:
            raise ConfigError("campaign: give a campaign id to resume or a config file to start")
        cfg = CampaignConfig.load(config_path)
        campaign_id = create_campaign(store, cfg, source=config_path)
        log.info("created campaign %s (id %d)", cfg.name, campaign_id)
    info = store.campaign(campaign_id)
    cfg = CampaignConfig.parse(info.config, source=f"campaign {campaign_id}")
    store.set_campaign_status(campaign_id, "running")
    publish_campaign(store, campaign_id)
    try:
        while (reason := stop_reason(store, campaign_id, cfg)) is None:
            active_learning_round(campaign_id=campaign_id, database_url=database_url)
            publish_campaign(store, campaign_id)  # a new version of the overview after every round
    except BaseException as exc:
        interrupted = not isinstance(exc, Exception)  # Ctrl-C, SIGTERM, a cancel: `sapis campaign resume` goes on
        store.set_campaign_status(campaign_id, "stopped" if interrupted else "failed")
        why = "the campaign run was interrupted" if interrupted else "the campaign run failed (see its logs)"
        _publish_quietly(store, campaign_id, why)
        raise
    store.set_campaign_status(campaign_id, "done")
    publish_campaign(store, campaign_id, reason)
    final = export_campaign(store, campaign_id)
    print(f"campaign {info.name} (id {campaign_id}) stopped: {reason}")
    return {"campaign_id": campaign_id, "reason": reason, **final}


def _publish_quietly(store: Store, campaign_id: int, reason: str) -> None:
    """Best effort on the way out of a failed run: the overview must not hide the original error."""
    try:
        publish_campaign(store, campaign_id, reason)
    except Exception:  # the run's own exception is what matters here
        get_run_logger().warning("could not update the campaign overview artifact", exc_info=True)


def export_campaign(store: Store, campaign_id: int, out: Path | None = None) -> dict[str, Any]:
    """Write the campaign's data (extxyz) and its final model (the last finished round's ensemble).

    Every frame of the data carries ``held_out``: True for the campaign's held-out test labels (never trained
    on; its reported test errors are on these), False for the rest.

    The ensemble comes from the store (checked against the recorded sha256), so this works on any machine
    that reaches the store, not only on the one that trained it.
    """
    from sapis.storage.checkpoints import materialise_ensemble
    from sapis.tasks.plan import campaign_dir, campaign_label_ids, round_dir

    campaign_id = store.campaign(campaign_id).id
    rounds = [r for r in store.rounds(campaign_id) if r.status == "done"]
    home = campaign_dir(store, campaign_id)
    out = out or home
    out.mkdir(parents=True, exist_ok=True)
    data = out / "labels.extxyz"
    # only the campaign's own level of theory: a pool added with labels at another level must not mix in
    cfg = CampaignConfig.parse(store.campaign(campaign_id).config, source=f"campaign {campaign_id}")
    n = store.export_extxyz(data, campaign_id=campaign_id, fingerprint=cfg.level.fingerprint)
    test_ids = campaign_label_ids(store, campaign_id)["test"]
    n_test = 0
    if test_ids:
        n_test = store.label_counts(fingerprint=cfg.level.fingerprint, config_ids=test_ids).get("done", 0)
    model = None
    for r in reversed(rounds):  # the newest finished round that trained a model
        model = materialise_ensemble(store, campaign_id, r.index, round_dir(store, campaign_id, r.index) / "ensemble")
        if model is not None:
            break
    return {"data": str(data), "n_labels": n, "n_held_out": n_test, "model": str(model) if model else None}
