import time
from pathlib import Path

import pytest

from spinegate.service.config import ConfigError, Destination, load_config
from spinegate.service.store import InstanceRecord, StateStore, StudyState


def test_defaults_file_env_and_cli_layer_in_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("network: {port: 12000, ae_title: FROMFILE}\nassembly: {quiet_period_s: 5}\n")
    cfg = load_config(f, overrides={"network": {"port": 12002, "ae_title": None}},
                      environ={"SPINEGATE_NETWORK__PORT": "12001", "SPINEGATE_ASSEMBLY__QUIET_PERIOD_S": "7.5",
                               "SPINEGATE_EXPORT__DESTINATIONS": "[{ae_title: PACS, host: 127.0.0.1, port: 4242}]"})
    assert cfg.network.port == 12002
    assert cfg.network.ae_title == "FROMFILE"
    assert cfg.assembly.quiet_period_s == 7.5
    assert cfg.export.destinations == (Destination("PACS", "127.0.0.1", 4242),)
    assert cfg.routing[0].name == "sag_t1"


@pytest.mark.parametrize(
    "environ, match",
    [
        ({"SPINEGATE_NETWORK__PORT": "eleven"}, "network.port"),
        ({"SPINEGATE_ASSEMBLY__QUIET_PERIOD_S": "-1"}, "quiet_period_s"),
        ({"SPINEGATE_NETWORK__COLOUR": "red"}, "Unknown key"),
        ({"SPINEGATE_EXPORT__DESTINATIONS": "[{ae_title: WAYTOOLONGAETITLE17, host: h, port: 1}]"}, "ae_title"),
        ({"SPINEGATE_STORAGE__DELETE_INPUTS_AFTER_EXPORT": "maybe"}, "delete_inputs_after_export"),
        ({"SPINEGATE_NETWORK__MAXIMUM_PDU_BYTES": "100"}, "network.maximum_pdu_bytes"),
        ({"SPINEGATE_NETWORK__RECEIVER_PROCESSES": "0"}, "network.receiver_processes"),
        ({"SPINEGATE_INFERENCE__AXIAL_PRECISION": "fp16"}, "inference.axial_precision"),
    ],
)
def test_bad_values_name_the_key(environ, match):
    with pytest.raises(ConfigError, match=match):
        load_config(environ=environ)


@pytest.mark.parametrize(
    "yaml_text, match",
    [
        ("network: {ae_title: SEVENTEENCHARSAET}", "network.ae_title"),
        ("network: {ae_title: 'A\\\\B'}", "network.ae_title"),
        ("network: {port: 70000}", "network.port"),
        ("network: {acse_timeout_s: 0}", "network.acse_timeout_s"),
        ("inference: {threads: 0}", "inference.threads"),
        ("inference: {backend: tensorflow}", "inference.backend"),
        ("export: {backoff_initial_s: 10, backoff_max_s: 5}", "backoff_max_s"),
        ("export: {calling_ae_title: ''}", "export.calling_ae_title"),
        ("queue: {backend: kafka}", "queue.backend"),
        ("routing: []", "routing"),
        ("routing: [{name: a, engine: sagittal_spine, planes: [sagital]}]", "routing.0.planes.0"),
        ("routing: [{name: a, engine: spine_net}]", "routing.0.engine"),
        ("routing: [{name: a, engine: sagittal_spine, weightings: [PD]}]", "routing.0.weightings.0"),
        ("routing: [{name: a, engine: sagittal_spine}, {name: a, engine: axial_muscle}]", "unique"),
        ("storage: {root: var, colour: red}", "Unknown key 'storage.colour'"),
    ],
)
def test_every_key_is_checked_and_named(tmp_path, yaml_text, match):
    f = tmp_path / "c.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError, match=match):
        load_config(f, environ={})


def test_routing_values_are_parsed_into_the_classifier_enums(tmp_path):
    """A capitalised plane is read as the plane, not silently matched against nothing."""
    from spinegate.dicom_io.classify import Plane, SeriesClass, Weighting
    from spinegate.service.routing import route

    f = tmp_path / "c.yaml"
    f.write_text("routing: [{name: sag, engine: sagittal_spine, planes: [Sagittal], weightings: [t2, Water]}]\n")
    rule = load_config(f, environ={}).routing[0]
    assert rule.planes == (Plane.SAGITTAL,) and rule.weightings == (Weighting.T2, Weighting.WATER)
    decision = route(SeriesClass(Plane.SAGITTAL, Weighting.T2, ""), (rule,))
    assert (decision.engine, decision.rule) == ("sagittal_spine", "sag")
    assert route(SeriesClass(Plane.AXIAL, Weighting.T2, ""), (rule,)).skipped_reason == "no_rule_for_axial_T2"


def test_secrets_are_redacted_everywhere_they_are_shown(tmp_path):
    url = "redis://:hunter2-secret@127.0.0.1:6379/0"
    cfg = load_config(environ={"SPINEGATE_QUEUE__REDIS_URL": url})
    assert cfg.queue.redis_url.get_secret_value() == url
    assert "hunter2" not in str(cfg.redacted()) and "hunter2" not in repr(cfg)
    with pytest.raises(ConfigError) as bad:
        load_config(environ={"SPINEGATE_QUEUE__REDIS_URL": "http://:hunter2-secret@host/0"})
    assert "queue.redis_url" in str(bad.value) and "hunter2" not in str(bad.value)


def test_an_environment_variable_naming_no_section_is_an_error():
    with pytest.raises(ConfigError, match="Unknown section 'netwrok'"):
        load_config(environ={"SPINEGATE_NETWROK__PORT": "11113"})


def test_unreadable_file_is_a_config_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("network: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad, environ={})


def _rec(sop: str, study: str = "1.2.3") -> InstanceRecord:
    return InstanceRecord(sop, study, "1.2.3.4", "1.2.840.10008.5.1.4.1.1.4", Path(f"/x/{sop}.dcm"))


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.integration)])
def open_store(request, tmp_path):
    """A factory reopening the same store: SQLite, or a real redis-server."""
    if request.param == "sqlite":
        yield lambda: StateStore(tmp_path / "s.sqlite")
        return
    from peers import RedisServer
    from spinegate.service.store_redis import RedisStateStore

    server = RedisServer.start(tmp_path / "redis")
    yield lambda: RedisStateStore(server.url, "test")
    server.stop()


def test_store_tracks_state_versions_and_duplicates(open_store):
    store = open_store()
    assert store.record_instance(_rec("1.1"), now=100.0)
    assert not store.record_instance(_rec("1.1"), now=101.0)  # duplicate: not stored twice
    assert store.record_instance(_rec("1.2"), now=102.0)
    rec = store.study("1.2.3")
    assert (rec.state, rec.n_instances, rec.version, rec.last_received) == (StudyState.RECEIVED, 2, 2, 102.0)
    assert store.transition("1.2.3", StudyState.COMPLETE, (StudyState.RECEIVED,), version=2)
    assert not store.transition("1.2.3", StudyState.COMPLETE, (StudyState.RECEIVED,))  # compare-and-set
    assert store.transition("1.2.3", StudyState.PROCESSING, (StudyState.COMPLETE,))
    store.record_instance(_rec("1.3"), now=time.time())  # arrives while processing
    assert store.study("1.2.3").state is StudyState.PROCESSING
    assert not store.transition("1.2.3", StudyState.EXPORTED, (StudyState.PROCESSING,), version=2)
    assert store.transition("1.2.3", StudyState.EXPORTED, (StudyState.PROCESSING,), detail={"a": 1})
    store.record_instance(_rec("1.4"), now=time.time())  # late series re-triggers the study
    assert store.study("1.2.3").state is StudyState.RECEIVED
    assert len(store.instances("1.2.3")) == 4
    store.quarantine(Path("/q/1"), "wrong_modality")
    assert store.count_by_state() == {"received": 1}
    assert [r.study_uid for r in store.studies((StudyState.RECEIVED,))] == ["1.2.3"]
    store.close()
    reopened = open_store()
    assert reopened.study("1.2.3").n_instances == 4  # durable
    assert reopened.quarantined() == [(Path("/q/1"), "wrong_modality")]
    assert reopened.study("9.9") is None and not reopened.transition("9.9", StudyState.COMPLETE)


def test_forgetting_deleted_inputs_needs_the_analysed_version(open_store):
    """Both stores drop the index rows of deleted inputs only while no
    instance arrived after the analysis; afterwards a re-sent instance is
    stored again instead of being acknowledged as a duplicate."""
    store = open_store()
    store.record_instance(_rec("1.1"), now=100.0)
    version = store.study("1.2.3").version
    store.record_instance(_rec("1.2"), now=101.0)
    assert not store.forget_instances("1.2.3", ["1.1"], version)
    assert len(store.instances("1.2.3")) == 2
    assert store.forget_instances("1.2.3", ["1.1", "1.2"], version + 1)
    assert store.instances("1.2.3") == [] and not store.has_instance("1.1")
    assert store.record_instance(_rec("1.1"), now=102.0)
    assert not store.forget_instances("9.9", ["1.1"], 1)
    store.close()
