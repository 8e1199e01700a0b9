"""The wire format: frames round-trip zero-copy, are authenticated, and errors travel back typed."""
import pickle

import numpy as np
import pytest

from dask_whisk import protocol

KEY = b"k" * 32


def test_frame_round_trip_keeps_arrays_out_of_band():
    value = {"a": np.arange(1_000_000, dtype="f8"), "b": [1, "x", None]}
    parts = protocol.encode(value, KEY)
    assert any(memoryview(p).nbytes == 8_000_000 for p in parts), "array buffer must be its own part"
    back = protocol.decode(protocol.join(parts), KEY)
    np.testing.assert_array_equal(back["a"], value["a"])
    assert back["b"] == [1, "x", None]


def test_tampered_frame_is_rejected_before_unpickling():
    data = bytearray(protocol.join(protocol.encode([1, 2, 3], KEY)))
    data[-1] ^= 1
    with pytest.raises(protocol.TamperedObject, match="integrity"):
        protocol.decode(data, KEY)
    with pytest.raises(protocol.TamperedObject):
        protocol.decode(protocol.join(protocol.encode([1], b"other" * 6)), KEY)
    with pytest.raises(protocol.TamperedObject, match="magic"):
        protocol.decode(pickle.dumps([1]), KEY)


def test_invocation_json_round_trip_and_version_check():
    call = protocol.UnitCall("u0", 1, {"inline": "AA=="}, [], [protocol.output_name("u0", 1, 0)])
    inv = protocol.Invocation("job", KEY, {"kind": "local"}, [call, call])
    assert protocol.Invocation.from_json(inv.to_json()) == inv
    stored = protocol.Invocation("job", KEY, {"kind": "local"}, manifest=protocol.stored_ref("m-u0-a1", 9))
    assert protocol.Invocation.from_json(stored.to_json()) == stored and "units" not in stored.to_json()
    wrong = {**inv.to_json(), "dask_whisk": 999}
    with pytest.raises(ValueError, match="dask-whisk deploy"):
        protocol.Invocation.from_json(wrong)


def test_user_exception_travels_back_with_type_and_remote_traceback():
    try:
        {}["missing"]
    except KeyError as exc:
        envelope = protocol.error_envelope(exc, ("x", 1), KEY)
    assert protocol.is_error_envelope(envelope)
    exc = protocol.exception_from_error(envelope["error"], KEY)
    assert type(exc) is KeyError and exc.args == ("missing",)
    assert "Remote traceback" in exc.__notes__[0] and "('x', 1)" in exc.__notes__[0]


def test_unpicklable_exception_becomes_remote_error_with_its_text():
    class Local(Exception):
        def __reduce__(self):
            raise TypeError("no")

    envelope = protocol.error_envelope(Local("boom"), "k", KEY)
    exc = protocol.exception_from_error(envelope["error"], KEY)
    assert isinstance(exc, protocol.RemoteError) and "boom" in str(exc)


def test_attempts_never_share_output_names():
    names = {protocol.output_name(u, a, i) for u in ("u1", "u12") for a in (1, 2, 11) for i in (0, 1, 21)}
    assert len(names) == 2 * 3 * 3


def test_invocation_repr_shows_no_key():
    inv = protocol.Invocation("job", KEY, {"kind": "local"}, [])
    assert protocol.b64(KEY) not in repr(inv) and repr(KEY) not in repr(inv)


def test_success_result_never_has_top_level_error_key():
    unit = protocol.UnitResult([protocol.stored_ref("k-1", 10)], {"compute_s": 0.1})
    result = protocol.BatchResult([unit, unit], {"cold": True}).to_json()
    assert "error" not in result
    parsed = protocol.BatchResult.from_json(result)
    assert [u.outputs for u in parsed.units] == [[{"stored": "k-1", "nbytes": 10}]] * 2


def test_a_frame_is_bound_to_its_name():
    frame = protocol.encode([1, 2], KEY, "o-u1-a1-0")
    assert protocol.decode(protocol.join(frame), KEY, "o-u1-a1-0") == [1, 2]
    for other in ("o-u1-a2-0", "o-u2-a1-0", ""):  # another attempt, another unit, inline
        with pytest.raises(protocol.TamperedObject, match="integrity check"):
            protocol.decode(protocol.join(frame), KEY, other)
    resealed = protocol.seal(protocol.encode([3], KEY), KEY, "spec-u4")
    assert protocol.decode(protocol.join(resealed), KEY, "spec-u4") == [3]
    with pytest.raises(protocol.TamperedObject):
        protocol.decode(protocol.join(resealed), KEY)



def test_bundle_members_are_read_with_one_request_per_run_and_bound_to_their_names(tmp_path):
    """Members of a bundle close together are read with one ranged request; one far away gets
    its own; an object named twice (two units of a batch reading one input) is read once; a
    member presented under another member's name is refused."""
    from dask_whisk.store.local import LocalWorkerStore

    class Counting(LocalWorkerStore):
        def __init__(self, directory):
            super().__init__(directory)
            self.calls = []

        def get(self, name):
            self.calls.append(("get", name))
            return super().get(name)

        def get_range(self, name, start, stop):
            self.calls.append(("range", name, start, stop))
            return super().get_range(name, start, stop)

    store = Counting(tmp_path)
    values = [np.arange(1000) + i for i in range(4)]
    bundle, refs, offset = [], [], 0
    for i, value in enumerate(values):
        sealed = protocol.seal(protocol.encode(value, KEY), KEY, f"o-u1-a1-{i}")
        refs.append(protocol.bundled_ref("o-u1-a1-b0", offset, protocol.frame_size(sealed), f"o-u1-a1-{i}"))
        bundle.extend(sealed)
        offset += protocol.frame_size(sealed)
    far = protocol.seal(protocol.encode("far", KEY), KEY, "o-u2-a1-0")
    bundle.extend([b"\0" * (protocol.COALESCE_GAP_BYTES + 1), *far])
    refs.append(protocol.bundled_ref("o-u1-a1-b0", offset + protocol.COALESCE_GAP_BYTES + 1,
                                     protocol.frame_size(far), "o-u2-a1-0"))
    store.put("o-u1-a1-b0", bundle)
    store.put("k-whole", protocol.seal(protocol.encode("whole", KEY), KEY, "k-whole"))
    wanted = [refs[2], protocol.stored_ref("k-whole", 0), refs[0], refs[4], refs[1],
              protocol.inline_ref(protocol.join(protocol.encode("inline", KEY))),
              protocol.stored_ref("k-whole", 0), refs[0]]
    frames = protocol.fetch_frames(wanted, store)
    decoded = [protocol.decode(f, KEY, protocol.ref_name(r)) for f, r in zip(frames, wanted)]
    expected_values = [values[2], "whole", values[0], "far", values[1], "inline", "whole", values[0]]
    assert len(decoded) == len(expected_values)
    for got, expected in zip(decoded, expected_values):
        assert np.array_equal(got, expected) if isinstance(got, np.ndarray) else got == expected
    assert sorted(c[0] for c in store.calls) == ["get", "range", "range"], store.calls
    swapped = {**refs[0], "name": refs[1]["name"]}
    with pytest.raises(protocol.TamperedObject):
        protocol.decode(protocol.fetch_frames([swapped], store)[0], KEY, protocol.ref_name(swapped))
