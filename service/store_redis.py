"""Study state in Redis, for scale-out (``queue.backend: redis``).

The same contract as `service.store.StateStore` (the SQLite default), so
receivers keep nothing but the spool and any number of workers on any
machine share one truth. Every state change is one Lua script, atomic in
Redis: recording an instance (with the study's version bump and re-trigger
rules) and the compare-and-set transition.

Keys (prefix ``<queue.name>:state:``): ``instance:<sop>`` hash,
``study:<uid>`` hash, ``study:<uid>:instances`` set, ``studies`` sorted set
by first receipt, ``quarantine`` list. Instance paths are absolute spool
paths: every worker must mount the spool at the same place.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

from spinegate.service.store import InstanceRecord, StudyRecord, StudyState

__all__ = ["RedisStateStore"]

_RECORD_INSTANCE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'study', ARGV[2], 'series', ARGV[3], 'sop_class', ARGV[4], 'path', ARGV[5],
           'received', ARGV[6])
redis.call('SADD', KEYS[4], ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('HSET', KEYS[2], 'state', 'received', 'reason', '', 'version', 1, 'n_instances', 1,
             'first_received', ARGV[6], 'last_received', ARGV[6], 'updated', ARGV[6], 'detail', '{}')
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[2])
else
  redis.call('HINCRBY', KEYS[2], 'version', 1)
  redis.call('HINCRBY', KEYS[2], 'n_instances', 1)
  redis.call('HSET', KEYS[2], 'last_received', ARGV[6], 'updated', ARGV[6])
  if redis.call('HGET', KEYS[2], 'state') ~= 'processing' then
    redis.call('HSET', KEYS[2], 'state', 'received', 'reason', '')
  end
end
return 1
"""

# ARGV: to, reason, now, detail ('' = keep), version ('' = any), from states...
_TRANSITION = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local state = redis.call('HGET', KEYS[1], 'state')
if #ARGV > 5 then
  local allowed = false
  for i = 6, #ARGV do if ARGV[i] == state then allowed = true end end
  if not allowed then return 0 end
end
if ARGV[5] ~= '' and redis.call('HGET', KEYS[1], 'version') ~= ARGV[5] then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'reason', ARGV[2], 'updated', ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'detail', ARGV[4]) end
return 1
"""

# KEYS: study hash, study's instance set; ARGV: version, instance key prefix, SOP UIDs...
_FORGET_INSTANCES = """
if redis.call('HGET', KEYS[1], 'version') ~= ARGV[1] then return 0 end
for i = 3, #ARGV do
  redis.call('DEL', ARGV[2] .. ARGV[i])
  redis.call('SREM', KEYS[2], ARGV[i])
end
return 1
"""


class RedisStateStore:
    """`StateStore` on Redis.

    Parameters
    ----------
    url : str
        ``redis://host:port/db``.
    prefix : str
        Key namespace (the queue name), so several deployments can share a server.
    """

    def __init__(self, url: str, prefix: str = "spinegate") -> None:
        import redis

        self._redis = redis.Redis.from_url(url, decode_responses=True)
        self._p = f"{prefix}:state:"
        self._record = self._redis.register_script(_RECORD_INSTANCE)
        self._transition = self._redis.register_script(_TRANSITION)
        self._forget = self._redis.register_script(_FORGET_INSTANCES)
        self._redis.ping()

    def close(self) -> None:
        self._redis.close()

    def _study_key(self, uid: str) -> str:
        return f"{self._p}study:{uid}"

    def has_instance(self, sop_instance_uid: str) -> bool:
        return bool(self._redis.exists(f"{self._p}instance:{sop_instance_uid}"))

    def record_instance(self, rec: InstanceRecord, now: float | None = None) -> bool:
        """Record a stored instance; returns False if it was already known."""
        now = time.time() if now is None else now
        keys = [f"{self._p}instance:{rec.sop_instance_uid}", self._study_key(rec.study_uid), f"{self._p}studies",
                f"{self._study_key(rec.study_uid)}:instances"]
        args = [rec.sop_instance_uid, rec.study_uid, rec.series_uid, rec.sop_class_uid, str(rec.path), repr(now)]
        return bool(self._record(keys=keys, args=args))

    def forget_instances(self, study_uid: str, sop_instance_uids: list[str], version: int) -> bool:
        """Drop the index rows of a study's deleted inputs, only if no
        instance arrived since ``version`` (see `StateStore.forget_instances`)."""
        keys = [self._study_key(study_uid), f"{self._study_key(study_uid)}:instances"]
        return bool(self._forget(keys=keys, args=[str(version), f"{self._p}instance:", *sop_instance_uids]))

    def quarantine(self, path: Path, reason: str) -> None:
        self._redis.rpush(f"{self._p}quarantine", json.dumps({"path": str(path), "reason": reason,
                                                              "received": time.time()}))

    def quarantined(self) -> list[tuple[Path, str]]:
        return [(Path(d["path"]), d["reason"]) for d in map(json.loads, self._redis.lrange(f"{self._p}quarantine", 0, -1))]

    def _hashes(self, keys: list[str]) -> list[dict[str, str]]:
        """HGETALL of many keys in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return pipe.execute()

    def instances(self, study_uid: str) -> list[InstanceRecord]:
        sops: list[str] = sorted(self._redis.smembers(f"{self._study_key(study_uid)}:instances"))  # type: ignore[arg-type]
        out = [InstanceRecord(sop, h["study"], h["series"], h["sop_class"], Path(h["path"]))
               for sop, h in zip(sops, self._hashes([f"{self._p}instance:{sop}" for sop in sops]))]
        return sorted(out, key=lambda r: (r.series_uid, str(r.path)))

    def study(self, study_uid: str) -> StudyRecord | None:
        h: dict[str, str] = self._redis.hgetall(self._study_key(study_uid))  # type: ignore[assignment]
        return _record(study_uid, h) if h else None

    def studies(self, states: tuple[StudyState, ...] = ()) -> Iterator[StudyRecord]:
        uids: list[str] = self._redis.zrange(f"{self._p}studies", 0, -1)  # type: ignore[assignment]
        for uid, h in zip(uids, self._hashes([self._study_key(u) for u in uids])):
            rec = _record(uid, h) if h else None
            if rec is not None and (not states or rec.state in states):
                yield rec

    def count_by_state(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for rec in self.studies():
            counts[rec.state.value] = counts.get(rec.state.value, 0) + 1
        return counts

    def oldest_waiting_s(self, now: float | None = None) -> float:
        waiting = [rec.updated for rec in self.studies((StudyState.COMPLETE,))]
        return 0.0 if not waiting else max(0.0, (now or time.time()) - min(waiting))

    def transition(
        self, study_uid: str, to: StudyState, from_states: tuple[StudyState, ...] = (), reason: str = "",
        detail: dict[str, Any] | None = None, version: int | None = None,
    ) -> bool:
        """Set the state if the current state is in ``from_states`` (any if
        empty) and, when given, the version still equals ``version``."""
        args = [to.value, reason, repr(time.time()), "" if detail is None else json.dumps(detail),
                "" if version is None else str(version), *(s.value for s in from_states)]
        return bool(self._transition(keys=[self._study_key(study_uid)], args=args))


def _record(uid: str, h: dict[str, str]) -> StudyRecord:
    return StudyRecord(uid, StudyState(h["state"]), h.get("reason", ""), int(h["version"]), int(h["n_instances"]),
                       float(h["first_received"]), float(h["last_received"]), float(h["updated"]),
                       json.loads(h.get("detail") or "{}"))
