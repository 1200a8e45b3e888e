/* synprobe.h: a fleet of half-open (SYN) health-probe targets run by one call (C API).
 *
 * Single-threaded: the caller (the Cython wrapper, with the GIL released) owns the fleet. The
 * raw sockets ("lanes") are opened, bound, filtered and closed by the caller; the fleet only
 * sends on them and reads from them. Every function returns 0 or -errno unless noted.
 */
#ifndef L4LB_SYNPROBE_H
#define L4LB_SYNPROBE_H

#include <stdint.h>

#define SP_MAX_LANES 64        /* lane ids are 0..SP_MAX_LANES-1 */
#define SP_MAX_PORTS 32        /* reserved source ports per lane */
#define SP_MAX_TARGETS (1u << 22) /* target ids are 0..SP_MAX_TARGETS-1 (keep them dense) */
#define SP_NO_EVENT INT64_MAX  /* next_due when the fleet has no target */

/* Verdict of one probe (sp_result.verdict). */
enum sp_verdict {
    SP_UP = 1,                 /* SYN-ACK acknowledging our SYN */
    SP_REFUSED = 2,            /* RST+ACK acknowledging our SYN */
    SP_TIMEOUT = 3,            /* no answer before the timeout */
    SP_LOCAL_ERROR = 4,        /* the SYN could not be sent for a local reason (err): inconclusive */
    SP_SEND_ERROR = 5,         /* the send failed for a reason that concerns the backend (err) */
};

/* One result, as run() writes it (16 bytes, native byte order: "=IIiI"). */
struct sp_result {
    uint32_t id;               /* the target */
    uint32_t verdict;          /* enum sp_verdict */
    int32_t err;               /* errno of a send failure, else 0 */
    uint32_t latency_us;       /* microseconds from the send to the verdict */
};

/* One target's quiet passes since the last collect, as sp_fleet_collect_all writes them
 * (24 bytes, native byte order: "=IIQq"). */
struct sp_quiet {
    uint32_t id;               /* the target */
    uint32_t latency_us;       /* latency of the last of them */
    uint64_t count;            /* quiet passes since the last collect (> 0) */
    int64_t last_ns;           /* verdict time of the last of them (that run's now_ns) */
};

/* What sp_target_info reports (for tests and diagnostics). */
struct sp_target_info {
    int64_t due_ns;            /* next send time (valid when !in_flight) */
    int64_t start_ns;          /* send time of the last probe (0: none yet) */
    int64_t deadline_ns;       /* timeout of the probe in flight */
    uint32_t seq;              /* seq of the probe in flight (or the last one) */
    uint16_t sport;            /* our source port of that probe */
    uint8_t in_flight;         /* 1 while a probe waits for its answer */
};

struct sp_fleet;

/* A new empty fleet; seed drives both the jitter draws and the SYN sequence numbers. */
int sp_fleet_create(uint64_t seed, struct sp_fleet **out);
/* Free the fleet (the lane fds stay open: they belong to the caller). */
void sp_fleet_destroy(struct sp_fleet *f);
/* Register lane `lane`: a nonblocking raw IPPROTO_TCP socket of family AF_INET or AF_INET6 and
 * the reserved source ports its probes rotate through. -EEXIST if the lane id is taken. */
int sp_lane_add(struct sp_fleet *f, uint32_t lane, int family, int fd, const uint16_t *ports,
                uint32_t nports);
/* Add target `id` probed through `lane`: packed destination and source addresses (4 or 16
 * bytes, the lane's family), probed port, IPv6 scope id, timeout, interval, jitter (parts per
 * million of the interval) and the time of its first probe. -EEXIST if the id is taken. */
int sp_target_add(struct sp_fleet *f, uint32_t id, uint32_t lane, const uint8_t *dst,
                  uint16_t dport, const uint8_t *src, uint32_t scope_id, uint32_t timeout_ms,
                  uint32_t interval_ms, uint32_t jitter_ppm, int64_t first_due_ns);
/* The kernel's source address towards `id` changed (routes): new checksum template. src_len
 * must match the target's family (4 or 16), else -EINVAL. */
int sp_target_set_source(struct sp_fleet *f, uint32_t id, const uint8_t *src, uint32_t src_len);
/* Forget target `id`; a probe in flight is abandoned (its reply is ignored). -ENOENT if unknown. */
int sp_target_remove(struct sp_fleet *f, uint32_t id);
/* New interval/timeout/jitter for `id`. If it is waiting for its next probe, that probe is
 * rescheduled with the new interval and the same jitter draw, never before the last verdict. */
int sp_target_set_timing(struct sp_fleet *f, uint32_t id, uint32_t interval_ms,
                         uint32_t timeout_ms, uint32_t jitter_ppm);
/* Quiet on/off for `id` (default off). While quiet, a pass (SP_UP) is not written to the
 * results: it is counted, and its time and latency kept, until sp_target_collect. Every other
 * verdict is reported as usual. Turning quiet off keeps the passes not yet collected. */
int sp_target_set_quiet(struct sp_fleet *f, uint32_t id, int quiet);
/* The quiet passes of `id` since the last collect: their number, the verdict time and the
 * latency of the last one (all 0 if none); resets them. */
int sp_target_collect(struct sp_fleet *f, uint32_t id, uint64_t *count, int64_t *last_ns,
                      uint32_t *latency_us);
/* Every target with quiet passes not yet collected, in id order, up to max records; returns
 * the number written. reset: collect them (those targets are reset, the rest stay for the next
 * call); 0: only read them (the caller wants the latest latencies, not the passes). */
uint32_t sp_fleet_collect_all(struct sp_fleet *f, struct sp_quiet *out, uint32_t max, int reset);
/* Targets with quiet passes not yet collected. */
uint32_t sp_fleet_quiet_pending(const struct sp_fleet *f);
/* Quiet passes since the fleet was created (collected or not, removed targets included). */
uint64_t sp_fleet_quiet_passes(const struct sp_fleet *f);
/* The state of target `id`. */
int sp_target_info(const struct sp_fleet *f, uint32_t id, struct sp_target_info *out);
/* Targets with a probe in flight. */
uint32_t sp_fleet_in_flight(const struct sp_fleet *f);
/* Stray segments seen (passed the filter, matched no probe). */
uint64_t sp_fleet_stray(const struct sp_fleet *f);
/* Time of the earliest event (a probe due or a timeout), SP_NO_EVENT if none. */
int64_t sp_fleet_next_due(const struct sp_fleet *f);
/* Do everything due at now_ns: drain replies from every lane and match them, expire timeouts,
 * send the SYNs that are due, schedule each answered target's next probe. Writes up to
 * max_results results (a quiet target's passes are counted instead, see sp_target_set_quiet); returns their number (>= 0) or -errno. *next_due is the earliest event
 * left (now_ns when results were cut short at max_results: call again). now_ns is on the
 * CLOCK_MONOTONIC scale; a lane with SO_TIMESTAMPNS set gets latencies that end at the kernel's
 * receive time instead of now_ns. */
int sp_fleet_run(struct sp_fleet *f, int64_t now_ns, struct sp_result *results,
                 uint32_t max_results, int64_t *next_due);

/* Pure helpers (shared with the tests through the wrapper). */
/* splitmix64: advance *state and return the next output. */
uint64_t sp_splitmix64(uint64_t *state);
/* The delay to the next probe: interval scaled by a factor in [1 - jitter, 1 + jitter] given by
 * the 32-bit draw r (integer arithmetic, identical in the Python twin). */
int64_t sp_scaled_interval(int64_t interval_ns, uint32_t jitter_ppm, uint32_t r);

#endif
