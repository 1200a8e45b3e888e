# table.pxd: Cython declarations of src_ext/core/table.h (forwarding table, hash, Maglev, scheduler).
#
# A pure extern block, nothing is defined here; every function is declared nogil because none of
# them touches Python objects. The _Atomic fields of sched_shared are declared as plain integers:
# a C assignment to an _Atomic object is an atomic (seq_cst) store, so the generated code is right.

from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "table.h" nogil:
    enum:
        DP_TABLE_VERSION
        DP_MAX_SERVICES
        DP_MAX_BACKENDS
        DP_MAX_WEIGHT
        DP_MAX_PROXY_FROM
        MAGLEV_KEY_LEN

    enum dp_proto:
        DP_PROTO_TCP
        DP_PROTO_UDP

    enum dp_sched:
        DP_SCHED_RR
        DP_SCHED_WRR
        DP_SCHED_LC
        DP_SCHED_RANDOM2
        DP_SCHED_SRCHASH
        DP_SCHED_MAGLEV

    enum dp_hash_key:
        DP_HASH_SRC_IP
        DP_HASH_SRC_IP_PORT

    struct dp_service:
        uint32_t service_id
        uint8_t protocol
        uint8_t scheduler
        uint8_t hash_key
        uint32_t connect_timeout_ms
        uint32_t idle_timeout_ms
        uint32_t retries
        uint32_t max_connections
        uint32_t backend_first
        uint32_t backend_count
        uint32_t ring_first
        uint32_t ring_size
        uint8_t flow_key
        uint32_t max_flows
        uint32_t responses
        uint32_t proxy_from_first
        uint32_t proxy_from_count
        uint32_t queue_timeout_ms
        uint32_t max_queue

    struct dp_proxy_from:
        uint8_t family
        uint8_t prefix_len
        uint8_t addr[16]

    struct dp_backend:
        uint32_t backend_id
        uint8_t family
        uint8_t flags
        uint16_t port
        uint8_t addr[16]
        uint32_t weight
        uint32_t max_connections
        uint8_t source_family
        uint8_t source_addr[16]

    struct dp_table:
        uint64_t generation
        uint32_t hash_seed
        uint32_t n_services
        uint32_t n_backends
        uint32_t n_ring
        uint32_t n_proxy_from
        dp_service *services
        dp_backend *backends
        uint32_t *ring
        dp_proxy_from *proxy_from
        int16_t by_service_id[1024]
        uint8_t digest[32]

    int dp_table_parse(const uint8_t *blob, size_t len, dp_table **out, char *err, size_t errlen)
    void dp_table_free(dp_table *t)
    const dp_service *dp_table_service(const dp_table *t, uint32_t service_id)
    int dp_table_proxy_from_match(const dp_table *t, const dp_service *svc, uint8_t family,
                                  const uint8_t *addr)

    uint64_t dp_hash64(uint32_t seed, const uint8_t *data, size_t len)
    uint64_t dp_flow_hash(uint32_t seed, uint8_t family, const uint8_t *addr, uint16_t port,
                          uint8_t hash_key)

    int maglev_fill(uint32_t hash_seed, const dp_backend *backends, uint32_t n, uint32_t m,
                    uint32_t *ring)
    int maglev_is_prime(uint32_t m)
    void maglev_backend_key(const dp_backend *b, uint8_t *key)

    struct sched_shared:
        uint32_t rr_next[1024]
        int32_t active[65536]
        int32_t svc_active[1024]

    struct sched_worker:
        int64_t wrr_current[65536]
        uint64_t rng

    void sched_shared_init(sched_shared *sh)
    void sched_worker_init(sched_worker *w, uint64_t seed)
    uint64_t sched_rng_next(sched_worker *w)
    int sched_pick(const dp_table *t, const dp_service *svc, sched_shared *sh, sched_worker *w,
                   uint64_t flow_hash, const uint32_t *tried, uint32_t n_tried,
                   uint8_t cfamily, uint32_t *slot, uint32_t *out)
