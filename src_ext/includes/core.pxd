# core.pxd: Cython declarations of src_ext/core/dp.h (the data plane object) and ct's self-check.
#
# A pure extern block, nothing is defined here. Every function is nogil: none touches Python
# objects, and the blocking ones (remove_listener, sessions, flows, internals,
# close_backend_sessions, close_backends, set_connection_log, stop) must be
# called with the GIL released so that Python threads keep running while a worker answers.

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "dp.h" nogil:
    enum:
        DP_MAX_WORKERS
        DP_CONNLOG_MAX
        DP_CLOSE_MAX_IDS

    struct dp:
        pass

    struct dp_svc_stats:
        uint64_t conns_total
        int64_t conns_active
        uint64_t rejected
        uint64_t no_backend
        uint64_t bytes_to_backend
        uint64_t bytes_to_client
        uint64_t accept_errors
        uint64_t datagrams_in
        uint64_t datagrams_out
        uint64_t flows_created
        uint64_t flows_expired
        int64_t flows_active
        uint64_t drops_max_flows
        uint64_t drops_no_backend
        uint64_t drops_truncated
        uint64_t drops_send
        uint64_t drops_max_udp_flows
        uint64_t proxy_header_errors
        uint64_t proxy_header_timeouts
        uint64_t proxy_direct
        int64_t queued_now
        uint64_t queued_total
        uint64_t queue_timeouts
        uint64_t queue_wait_ms

    struct dp_be_stats:
        uint64_t conns_total
        int64_t conns_active
        uint64_t connect_failures
        uint64_t bytes_to_backend
        uint64_t bytes_to_client
        uint64_t datagrams_to_backend
        uint64_t datagrams_to_client
        int64_t flows_active
        uint64_t flows_total

    struct dp_stats_s "dp_stats":
        uint64_t generation
        uint64_t connlog_dropped
        uint64_t listener_pauses
        uint32_t n_be
        dp_svc_stats svc[1024]
        dp_be_stats be[65536]

    enum dp_session_state:
        DP_SESS_CONNECTING
        DP_SESS_ESTABLISHED
        DP_SESS_HALF_CLOSED

    struct dp_session_info:
        uint32_t service_id
        int32_t backend_id
        uint8_t family
        uint8_t state
        uint16_t port
        uint8_t addr[16]
        uint8_t peer_family
        uint16_t peer_port
        uint8_t peer_addr[16]
        double started
        uint64_t bytes_to_backend
        uint64_t bytes_to_client

    struct dp_flow_info:
        uint32_t service_id
        int32_t backend_id
        uint8_t family
        uint16_t port
        uint8_t addr[16]
        double started
        double last_seen
        uint64_t datagrams_to_backend
        uint64_t datagrams_to_client
        uint64_t bytes_to_backend
        uint64_t bytes_to_client

    enum:
        DP_CLOSE_N

    struct dp_conn_record:
        uint32_t service_id
        int32_t backend_id
        uint8_t protocol
        uint8_t reason
        uint8_t family
        uint8_t peer_family
        uint16_t port
        uint16_t peer_port
        uint8_t addr[16]
        uint8_t peer_addr[16]
        double started
        double duration
        uint64_t bytes_to_backend
        uint64_t bytes_to_client
        uint32_t queued_ms

    struct dp_internals_s "dp_internals":
        uint64_t pipes_created
        uint64_t pipes_reused
        uint64_t pipes_closed
        int64_t pipes_in_use
        uint64_t pipes_idle
        uint64_t pipe_size
        uint64_t sessions
        uint64_t slab_bytes
        uint64_t session_size
        uint64_t listener_pauses
        uint64_t park_allocs
        uint64_t copy_sends
        uint64_t splice_moves
        uint64_t splice_fallbacks
        uint64_t tables_pending
        int64_t sched_active
        int64_t sched_svc_active
        uint64_t flows
        uint64_t flow_slab_bytes
        uint64_t flow_size
        uint64_t udp_buf_bytes
        uint64_t udp_rx_calls
        uint64_t udp_rx_datagrams
        uint64_t udp_tx_calls
        uint64_t udp_tx_datagrams
        uint64_t udp_up_calls
        uint64_t udp_up_datagrams
        uint64_t udp_out_calls
        uint64_t udp_out_datagrams
        uint64_t udp_gso_datagrams
        uint64_t udp_gro_datagrams
        uint64_t udp_poll_sleeps
        uint64_t loop_iterations
        uint64_t close_passes
        uint64_t queue_kicks

    int dp_create(uint32_t n_workers, dp **out)
    int dp_set_tuning(dp *d, uint32_t copy_threshold, uint32_t pipe_size, int copy_only)
    int dp_set_udp_tuning(dp *d, uint32_t batch, uint32_t slot, int gso, int gro,
                          uint32_t poll_us)
    int dp_start(dp *d)
    int dp_add_listener(dp *d, uint32_t service_id, int fd, uint32_t worker)
    int dp_remove_listener(dp *d, int fd)
    int dp_publish(dp *d, const uint8_t *blob, size_t len, uint64_t *generation, char *err,
                   size_t errlen)
    uint64_t dp_generation(dp *d)
    int dp_stats(dp *d, dp_stats_s *out)
    int dp_sessions(dp *d, dp_session_info **out, size_t *n)
    int dp_flows(dp *d, dp_flow_info **out, size_t *n)
    int dp_udp_gso_supported()
    int dp_udp_gro_supported()
    int dp_internals(dp *d, dp_internals_s *out)
    int dp_close_backend_sessions(dp *d, uint32_t backend_id, int reason, uint64_t *closed)
    int dp_close_backends(dp *d, const uint32_t *ids, size_t n, int reason, uint64_t *closed)
    int dp_reset_counters(dp *d, int service, uint32_t id)
    int dp_set_connection_log(dp *d, int enabled, uint32_t capacity)
    int dp_closed_sessions(dp *d, size_t max, dp_conn_record **out, size_t *n)
    int dp_stop(dp *d, uint32_t timeout_ms)
    void dp_destroy(dp *d)


cdef extern from "ct.h" nogil:
    int ct_selftest(uint32_t seed, uint32_t rounds)
