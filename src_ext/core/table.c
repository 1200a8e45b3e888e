/* table.c: decodes and validates a forwarding-table blob into an immutable struct dp_table.
 *
 * Design. The control plane sends the table as one little-endian blob (docs/forwarding-table.md).
 * The data plane trusts nothing in it: every count, index and enum is checked here, once, before
 * the table can be published, so the forwarding path (sched_pick, the relay) indexes the arrays
 * without bounds checks. A refused blob leaves the live table untouched; the caller gets one line
 * naming the first failing field, in the same words as the Python twin l4lb/table/blob.py (the
 * tests compare the two texts).
 *
 * Check order ("first failing field"): the header in offset order; then every backend record
 * (fields in offset order), because the service checks need trusted weights; then every service
 * record (fields in offset order); then every service's ring entries; then every proxy_from
 * entry (accept_proxy_from prefixes). The whole table lives in ONE allocation (struct,
 * services, backends, ring, proxy_from), so freeing it is one free() and a parsed
 * table costs the blob's size plus ~2 KiB of lookup array. Integers are assembled byte by byte,
 * so the blob may be unaligned and the host may be of any endianness.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "table.h"

#define TABLE_HEADER_SIZE 32u  /* bytes of the header */
#define TABLE_SERVICE_SIZE 64u /* bytes of one service record */
#define TABLE_BACKEND_SIZE 56u /* bytes of one backend record */
#define TABLE_PROXY_FROM_SIZE 20u /* bytes of one proxy_from entry (bytes only: no alignment) */

static const char *const table_sched_names[] = {
    "round_robin", "weighted_round_robin", "least_conn", "random_two", "source_hash", "maglev",
};

static inline uint16_t table_rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static inline uint32_t table_rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

/* Write the reason into err (if any) and return -EINVAL. */
__attribute__((format(printf, 3, 4)))
static int table_fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err != NULL && errlen > 0) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

static inline size_t table_align8(size_t n)
{
    return (n + 7u) & ~(size_t)7u;
}

/* Header checks; fills the counts and the seed. */
static int table_check_header(const uint8_t *blob, size_t len, uint32_t *ns, uint32_t *nb,
                              uint32_t *nr, uint32_t *np, uint32_t *seed, char *err,
                              size_t errlen)
{
    uint32_t total;
    uint64_t expect;

    if (len < TABLE_HEADER_SIZE)
        return table_fail(err, errlen, "blob: length %zu is shorter than the 32-byte header",
                          len);
    if (memcmp(blob, DP_TABLE_MAGIC, 4) != 0)
        return table_fail(err, errlen, "header.magic: %02x%02x%02x%02x is not 4c344c42 (\"L4LB\")",
                          blob[0], blob[1], blob[2], blob[3]);
    if (table_rd16(blob + 4) != DP_TABLE_VERSION)
        return table_fail(err, errlen, "header.version: %u is not %u",
                          (unsigned)table_rd16(blob + 4), (unsigned)DP_TABLE_VERSION);
    if (table_rd16(blob + 6) != TABLE_HEADER_SIZE)
        return table_fail(err, errlen, "header.header_size: %u is not 32",
                          (unsigned)table_rd16(blob + 6));
    *ns = table_rd32(blob + 8);
    *nb = table_rd32(blob + 12);
    *nr = table_rd32(blob + 16);
    *seed = table_rd32(blob + 20);
    total = table_rd32(blob + 24);
    *np = table_rd32(blob + 28);
    if ((uint64_t)total != (uint64_t)len)
        return table_fail(err, errlen, "header.total_size: %u does not equal the blob length %zu",
                          total, len);
    expect = TABLE_HEADER_SIZE + (uint64_t)TABLE_SERVICE_SIZE * *ns +
             (uint64_t)TABLE_BACKEND_SIZE * *nb + 4ull * *nr +
             (uint64_t)TABLE_PROXY_FROM_SIZE * *np;
    if (expect != total)
        return table_fail(err, errlen,
                          "header.total_size: %u does not equal 32 + 64*%u + 56*%u + 4*%u + "
                          "20*%u = %llu",
                          total, *ns, *nb, *nr, *np, (unsigned long long)expect);
    return 0;
}

/* Decode and check backend record i. seen is a 65536-bit set of ids already used. */
static int table_check_backend(struct dp_table *t, const uint8_t *rec, uint32_t i, uint64_t *seen,
                               char *err, size_t errlen)
{
    struct dp_backend *b = &t->backends[i];
    uint32_t j, k;

    b->backend_id = table_rd32(rec);
    b->family = rec[4];
    b->flags = rec[5];
    b->port = table_rd16(rec + 6);
    memcpy(b->addr, rec + 8, 16);
    b->weight = table_rd32(rec + 24);
    b->max_connections = table_rd32(rec + 28);
    b->source_family = rec[32];
    memcpy(b->source_addr, rec + 36, 16);

    if (b->backend_id >= DP_MAX_BACKENDS)
        return table_fail(err, errlen, "backend[%u].backend_id: %u is not below 65536", i,
                          b->backend_id);
    if (seen[b->backend_id / 64] & (1ull << (b->backend_id % 64))) {
        for (j = 0; j < i && t->backends[j].backend_id != b->backend_id; j++)
            ;
        return table_fail(err, errlen, "backend[%u].backend_id: %u is also used by backend[%u]",
                          i, b->backend_id, j);
    }
    seen[b->backend_id / 64] |= 1ull << (b->backend_id % 64);
    if (b->family != 4 && b->family != 6)
        return table_fail(err, errlen, "backend[%u].family: %u is not 4 or 6", i,
                          (unsigned)b->family);
    if (b->port == 0)
        return table_fail(err, errlen, "backend[%u].port: 0 is not in 1..65535", i);
    if (b->family == 4)
        for (k = 4; k < 16; k++)
            if (b->addr[k] != 0)
                return table_fail(err, errlen,
                                  "backend[%u].addr: bytes 4..15 of an IPv4 address are not 0", i);
    if (b->weight > DP_MAX_WEIGHT)
        return table_fail(err, errlen, "backend[%u].weight: %u is above 256", i, b->weight);
    if (b->source_family != 0 && b->source_family != DP_SOURCE_CLIENT && b->source_family != 4 &&
        b->source_family != 6)
        return table_fail(err, errlen, "backend[%u].source_family: %u is not 0, 1, 4 or 6", i,
                          (unsigned)b->source_family);
    if (b->source_family != 0 && b->source_family != DP_SOURCE_CLIENT &&
        b->source_family != b->family)
        return table_fail(err, errlen,
                          "backend[%u].source_family: %u is not the backend's family %u", i,
                          (unsigned)b->source_family, (unsigned)b->family);
    if (rec[33] != 0 || rec[34] != 0 || rec[35] != 0)
        return table_fail(err, errlen, "backend[%u].reserved0: bytes 33..35 are not 0", i);
    for (k = b->source_family == 4 ? 4 : b->source_family == 6 ? 16 : 0; k < 16; k++)
        if (b->source_addr[k] != 0)
            return b->source_family == 4
                       ? table_fail(err, errlen, "backend[%u].source_addr: bytes 4..15 of an "
                                    "IPv4 address are not 0", i)
                       : table_fail(err, errlen, "backend[%u].source_addr: not 0 although "
                                    "source_family is %u", i, (unsigned)b->source_family);
    if (table_rd32(rec + 52) != 0)
        return table_fail(err, errlen, "backend[%u].reserved1: %u is not 0", i,
                          table_rd32(rec + 52));
    return 0;
}

/* Decode and check service record i (backends are already checked). */
static int table_check_service(struct dp_table *t, const uint8_t *rec, uint32_t i, char *err,
                               size_t errlen)
{
    struct dp_service *s = &t->services[i];
    uint32_t eligible = 0, wsum = 0, k;

    memset(s, 0, sizeof(*s));
    s->service_id = table_rd32(rec);
    s->protocol = rec[4];
    s->scheduler = rec[5];
    s->hash_key = rec[6];
    s->connect_timeout_ms = table_rd32(rec + 8);
    s->idle_timeout_ms = table_rd32(rec + 12);
    s->retries = table_rd32(rec + 16);
    s->max_connections = table_rd32(rec + 20);
    s->backend_first = table_rd32(rec + 24);
    s->backend_count = table_rd32(rec + 28);
    s->ring_first = table_rd32(rec + 32);
    s->ring_size = table_rd32(rec + 36);
    s->flow_key = rec[7];
    s->max_flows = table_rd32(rec + 40);
    s->responses = table_rd32(rec + 44);
    s->proxy_from_first = table_rd32(rec + 48);
    s->proxy_from_count = table_rd32(rec + 52);
    s->queue_timeout_ms = table_rd32(rec + 56);
    s->max_queue = table_rd32(rec + 60);

    if (s->service_id >= DP_MAX_SERVICES)
        return table_fail(err, errlen, "service[%u].service_id: %u is not below 1024", i,
                          s->service_id);
    if (t->by_service_id[s->service_id] >= 0)
        return table_fail(err, errlen, "service[%u].service_id: %u is also used by service[%d]",
                          i, s->service_id, (int)t->by_service_id[s->service_id]);
    t->by_service_id[s->service_id] = (int16_t)i;
    if (s->protocol > DP_PROTO_UDP)
        return table_fail(err, errlen, "service[%u].protocol: %u is not 0 (tcp) or 1 (udp)", i,
                          (unsigned)s->protocol);
    if (s->scheduler > DP_SCHED_MAGLEV)
        return table_fail(err, errlen, "service[%u].scheduler: %u is not in 0..5", i,
                          (unsigned)s->scheduler);
    if (s->hash_key > DP_HASH_SRC_IP_PORT)
        return table_fail(err, errlen,
                          "service[%u].hash_key: %u is not 0 (src_ip) or 1 (src_ip_port)", i,
                          (unsigned)s->hash_key);
    if (s->protocol == DP_PROTO_TCP && s->flow_key != 0)
        return table_fail(err, errlen, "service[%u].flow_key: %u is not 0 (tcp)", i,
                          (unsigned)s->flow_key);
    if (s->flow_key > DP_FLOW_SRC_IP)
        return table_fail(err, errlen,
                          "service[%u].flow_key: %u is not 0 (src_ip_port) or 1 (src_ip)", i,
                          (unsigned)s->flow_key);
    if (s->connect_timeout_ms == 0)
        return table_fail(err, errlen, "service[%u].connect_timeout_ms: 0 is not > 0", i);
    if (s->protocol == DP_PROTO_UDP && s->idle_timeout_ms == 0)
        return table_fail(err, errlen, "service[%u].idle_timeout_ms: 0 is not > 0 (udp)", i);
    if (s->backend_first > t->n_backends)
        return table_fail(err, errlen, "service[%u].backend_first: %u is beyond the %u backends",
                          i, s->backend_first, t->n_backends);
    if ((uint64_t)s->backend_first + s->backend_count > t->n_backends)
        return table_fail(err, errlen,
                          "service[%u].backend_count: %u backends from %u overrun the %u backends",
                          i, s->backend_count, s->backend_first, t->n_backends);
    if (s->ring_first > t->n_ring)
        return table_fail(err, errlen,
                          "service[%u].ring_first: %u is beyond the %u ring entries", i,
                          s->ring_first, t->n_ring);
    if ((uint64_t)s->ring_first + s->ring_size > t->n_ring)
        return table_fail(err, errlen,
                          "service[%u].ring_size: %u entries from %u overrun the %u ring entries",
                          i, s->ring_size, s->ring_first, t->n_ring);

    for (k = 0; k < s->backend_count; k++) {
        uint32_t w = t->backends[s->backend_first + k].weight;

        if (w > 0) {
            eligible++;
            wsum += w; /* <= 65536 * 256, no overflow */
        }
    }
    if (s->scheduler <= DP_SCHED_RANDOM2) {
        if (s->ring_size != 0)
            return table_fail(err, errlen,
                              "service[%u].ring_size: %u is not 0 (scheduler %s has no ring)", i,
                              s->ring_size, table_sched_names[s->scheduler]);
    } else if (s->scheduler == DP_SCHED_MAGLEV) {
        if (eligible == 0 && s->ring_size != 0)
            return table_fail(err, errlen,
                              "service[%u].ring_size: %u is not 0 although no backend is eligible",
                              i, s->ring_size);
        if (eligible > 0 && s->ring_size == 0)
            return table_fail(err, errlen,
                              "service[%u].ring_size: 0 although %u backends are eligible", i,
                              eligible);
        if (s->ring_size < eligible)
            return table_fail(err, errlen,
                              "service[%u].ring_size: %u is below the %u eligible backends", i,
                              s->ring_size, eligible);
        if (s->ring_size != 0 && !maglev_is_prime(s->ring_size))
            return table_fail(err, errlen, "service[%u].ring_size: %u is not prime", i,
                              s->ring_size);
    } else if (s->ring_size != wsum) {
        return table_fail(err, errlen,
                          "service[%u].ring_size: %u is not the sum of eligible weights %u", i,
                          s->ring_size, wsum);
    }
    if (s->protocol == DP_PROTO_TCP && s->max_flows != 0)
        return table_fail(err, errlen, "service[%u].max_flows: %u is not 0 (tcp)", i,
                          s->max_flows);
    if (s->protocol == DP_PROTO_TCP && s->responses != 0)
        return table_fail(err, errlen, "service[%u].responses: %u is not 0 (tcp)", i,
                          s->responses);
    if (s->proxy_from_first > t->n_proxy_from)
        return table_fail(err, errlen,
                          "service[%u].proxy_from_first: %u is beyond the %u proxy_from entries",
                          i, s->proxy_from_first, t->n_proxy_from);
    if (s->protocol == DP_PROTO_UDP && s->proxy_from_count != 0)
        return table_fail(err, errlen, "service[%u].proxy_from_count: %u is not 0 (udp)", i,
                          s->proxy_from_count);
    if (s->proxy_from_count > DP_MAX_PROXY_FROM)
        return table_fail(err, errlen, "service[%u].proxy_from_count: %u is above 64", i,
                          s->proxy_from_count);
    if ((uint64_t)s->proxy_from_first + s->proxy_from_count > t->n_proxy_from)
        return table_fail(err, errlen,
                          "service[%u].proxy_from_count: %u entries from %u overrun the %u "
                          "proxy_from entries",
                          i, s->proxy_from_count, s->proxy_from_first, t->n_proxy_from);
    if (s->protocol == DP_PROTO_UDP && s->queue_timeout_ms != 0)
        return table_fail(err, errlen, "service[%u].queue_timeout_ms: %u is not 0 (udp)", i,
                          s->queue_timeout_ms);
    if (s->protocol == DP_PROTO_UDP && s->max_queue != 0)
        return table_fail(err, errlen, "service[%u].max_queue: %u is not 0 (udp)", i,
                          s->max_queue);
    if (s->queue_timeout_ms && !s->max_queue)
        return table_fail(err, errlen, "service[%u].max_queue: 0 although queue_timeout_ms is %u",
                          i, s->queue_timeout_ms);
    return 0;
}

/* Check the ring entries of service i (its ranges are already checked). */
static int table_check_ring(const struct dp_table *t, uint32_t i, char *err, size_t errlen)
{
    const struct dp_service *s = &t->services[i];
    uint32_t j;

    for (j = 0; j < s->ring_size; j++) {
        uint32_t e = t->ring[s->ring_first + j];

        if (e >= s->backend_count)
            return table_fail(err, errlen, "service[%u].ring[%u]: %u is not below backend_count %u",
                              i, j, e, s->backend_count);
        if (t->backends[s->backend_first + e].weight == 0)
            return table_fail(err, errlen, "service[%u].ring[%u]: backend %u has weight 0", i, j,
                              e);
    }
    return 0;
}

/* Decode and check proxy_from entry i. */
static int table_check_proxy_from(struct dp_table *t, const uint8_t *rec, uint32_t i, char *err,
                                  size_t errlen)
{
    struct dp_proxy_from *e = &t->proxy_from[i];
    uint32_t alen, k;

    e->family = rec[0];
    e->prefix_len = rec[1];
    memcpy(e->addr, rec + 4, 16);
    if (e->family != 4 && e->family != 6)
        return table_fail(err, errlen, "proxy_from[%u].family: %u is not 4 or 6", i,
                          (unsigned)e->family);
    alen = e->family == 4 ? 4 : 16;
    if (e->prefix_len > alen * 8)
        return table_fail(err, errlen, "proxy_from[%u].prefix_len: %u is above %u (IPv%u)", i,
                          (unsigned)e->prefix_len, alen * 8, (unsigned)e->family);
    if (rec[2] != 0 || rec[3] != 0)
        return table_fail(err, errlen, "proxy_from[%u].reserved: bytes 2..3 are not 0", i);
    for (k = alen; k < 16; k++)
        if (e->addr[k] != 0)
            return table_fail(err, errlen,
                              "proxy_from[%u].addr: bytes 4..15 of an IPv4 address are not 0", i);
    for (k = 0; k < alen; k++) {
        uint32_t bits = e->prefix_len > k * 8 ? e->prefix_len - k * 8 : 0;
        uint8_t host = bits >= 8 ? 0 : (uint8_t)(0xffu >> bits);

        if (e->addr[k] & host)
            return table_fail(err, errlen, "proxy_from[%u].addr: host bits beyond /%u are not 0",
                              i, (unsigned)e->prefix_len);
    }
    return 0;
}

/* 1 when the first prefix_len bits of a and p are equal. */
static int table_prefix_eq(const uint8_t *a, const uint8_t *p, uint32_t prefix_len)
{
    uint32_t whole = prefix_len / 8, rest = prefix_len % 8;

    if (memcmp(a, p, whole) != 0)
        return 0;
    return rest == 0 || ((a[whole] ^ p[whole]) & (uint8_t)(0xffu << (8 - rest))) == 0;
}

int dp_table_proxy_from_match(const struct dp_table *t, const struct dp_service *svc,
                              uint8_t family, const uint8_t addr[16])
{
    static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
    const struct dp_proxy_from *e = t->proxy_from + svc->proxy_from_first;
    const uint8_t *v4 = family == 4 ? addr : NULL;
    uint32_t k;

    if (family == 6 && memcmp(addr, mapped, sizeof(mapped)) == 0)
        v4 = addr + 12; /* ::ffff:a.b.c.d, a dual-stack listener's IPv4 client */
    for (k = 0; k < svc->proxy_from_count; k++, e++) {
        if (e->family == 4 ? v4 != NULL && table_prefix_eq(v4, e->addr, e->prefix_len)
                           : family == 6 && table_prefix_eq(addr, e->addr, e->prefix_len))
            return 1;
    }
    return 0;
}

int dp_table_parse(const uint8_t *blob, size_t len, struct dp_table **out, char *err,
                   size_t errlen)
{
    uint64_t seen[DP_MAX_BACKENDS / 64];
    uint32_t ns = 0, nb = 0, nr = 0, np = 0, seed = 0, i;
    size_t off_svc, off_bk, off_ring, off_pf, size;
    const uint8_t *p;
    struct dp_table *t;
    char *mem;
    int rc;

    *out = NULL;
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    rc = table_check_header(blob, len, &ns, &nb, &nr, &np, &seed, err, errlen);
    if (rc < 0)
        return rc;

    off_svc = table_align8(sizeof(struct dp_table));
    off_bk = table_align8(off_svc + sizeof(struct dp_service) * (size_t)ns);
    off_ring = table_align8(off_bk + sizeof(struct dp_backend) * (size_t)nb);
    off_pf = table_align8(off_ring + sizeof(uint32_t) * (size_t)nr);
    size = off_pf + sizeof(struct dp_proxy_from) * (size_t)np;
    mem = malloc(size);
    if (mem == NULL)
        return -ENOMEM;
    t = (struct dp_table *)mem;
    memset(t, 0, sizeof(*t));
    t->hash_seed = seed;
    t->n_services = ns;
    t->n_backends = nb;
    t->n_ring = nr;
    t->n_proxy_from = np;
    t->services = (struct dp_service *)(mem + off_svc);
    t->backends = (struct dp_backend *)(mem + off_bk);
    t->ring = (uint32_t *)(mem + off_ring);
    t->proxy_from = (struct dp_proxy_from *)(mem + off_pf);
    for (i = 0; i < DP_MAX_SERVICES; i++)
        t->by_service_id[i] = -1;

    memset(seen, 0, sizeof(seen));
    p = blob + TABLE_HEADER_SIZE + (size_t)TABLE_SERVICE_SIZE * ns;
    for (i = 0; i < nb; i++) {
        rc = table_check_backend(t, p + (size_t)TABLE_BACKEND_SIZE * i, i, seen, err, errlen);
        if (rc < 0)
            goto fail;
    }
    p = blob + TABLE_HEADER_SIZE + (size_t)TABLE_SERVICE_SIZE * ns + (size_t)TABLE_BACKEND_SIZE * nb;
    for (i = 0; i < nr; i++)
        t->ring[i] = table_rd32(p + 4 * (size_t)i);
    p = blob + TABLE_HEADER_SIZE;
    for (i = 0; i < ns; i++) {
        rc = table_check_service(t, p + (size_t)TABLE_SERVICE_SIZE * i, i, err, errlen);
        if (rc < 0)
            goto fail;
    }
    for (i = 0; i < ns; i++) {
        rc = table_check_ring(t, i, err, errlen);
        if (rc < 0)
            goto fail;
    }
    p = blob + TABLE_HEADER_SIZE + (size_t)TABLE_SERVICE_SIZE * ns +
        (size_t)TABLE_BACKEND_SIZE * nb + 4 * (size_t)nr;
    for (i = 0; i < np; i++) {
        rc = table_check_proxy_from(t, p + (size_t)TABLE_PROXY_FROM_SIZE * i, i, err, errlen);
        if (rc < 0)
            goto fail;
    }
    *out = t;
    return 0;
fail:
    free(mem);
    return rc;
}

void dp_table_free(struct dp_table *t)
{
    free(t);
}

const struct dp_service *dp_table_service(const struct dp_table *t, uint32_t service_id)
{
    if (t == NULL || service_id >= DP_MAX_SERVICES || t->by_service_id[service_id] < 0)
        return NULL;
    return &t->services[t->by_service_id[service_id]];
}
