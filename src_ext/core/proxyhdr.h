/* proxyhdr.h: PROXY protocol headers (versions 1 and 2): built ahead of a relayed connection,
 * parsed at the start of an accepted one.
 *
 * Pure functions, no I/O: the TCP relay calls the builders once per backend connection of a
 * service with `proxy_protocol` and the parser on the first bytes of each client of a service
 * with `accept_proxy`; the Cython module exposes them so that the tests hold them to their
 * Python twin (l4lb/proxyproto.py) byte for byte and verdict for verdict.
 */
#ifndef L4LB_PROXYHDR_H
#define L4LB_PROXYHDR_H

#include <stddef.h>
#include <stdint.h>

#define PP_V1_MAX 107u             /* longest version 1 header, CRLF included */
#define PP_V2_MAX 52u              /* longest version 2 header written here (TCP over IPv6) */
#define PP_MAX PP_V1_MAX           /* a buffer this large holds either version */
#define PP_V2_HDR 16u              /* fixed part of a version 2 header (signature to length) */
#define PP_PARSE_MIN PP_V1_MAX     /* pp_parse() decides on at most this many bytes: a whole
                                      version 1 line, or a version 2 header up to its IPv6
                                      addresses (the rest, TLVs, is skipped by length) */

/* What pp_parse() found in a complete, valid header. */
struct pp_info {
    uint32_t len;                  /* bytes the whole header occupies, CRLF or TLVs included
                                      (version 2: 16 + its length field, up to 65551) */
    uint8_t version;               /* 1 or 2 */
    uint8_t family;                /* 4 or 6: src/dst below are the original connection's;
                                      0: use the real connection's addresses (version 2 LOCAL,
                                      "PROXY UNKNOWN", or a version 2 PROXY of a family that
                                      carries no usable TCP address: UNSPEC, UNIX, DGRAM) */
    uint16_t sport;                /* original source port, host order (family 4 or 6) */
    uint16_t dport;                /* original destination port, host order */
    uint8_t src[16];               /* original source address, network order, IPv4 first 4 */
    uint8_t dst[16];               /* original destination address, the same */
};

/* Write the header of a relayed TCP connection from src:sport (the client) to dst:dport (the
 * address it connected to) into out (cap bytes). family 4 or 6 for both addresses (network
 * order; an IPv4 address in the first 4 bytes); IPv4-mapped IPv6 pairs are written as IPv4.
 * Returns the length, -EINVAL (version not 1 or 2, family not 4 or 6) or -ENOSPC (cap too
 * small; PP_MAX always suffices). */
int pp_build(uint8_t *out, size_t cap, int version, int family, const uint8_t *src,
             uint16_t sport, const uint8_t *dst, uint16_t dport);

/* The header of a connection the balancer opens for itself (health probes): version 2 LOCAL,
 * version 1 "PROXY UNKNOWN". Same returns as pp_build. */
int pp_build_local(uint8_t *out, size_t cap, int version);

/* Parse the PROXY protocol header at the start of buf (n bytes received so far; the version is
 * told by the first byte, 'P' or the version 2 signature). Returns 1 when a complete valid
 * header is there (*out filled; out->len may exceed n for a version 2 header whose TLVs have
 * not all arrived: only its fixed part and addresses are read), 0 when the bytes so far are a
 * valid beginning and more are needed (never once n >= PP_PARSE_MIN), -EINVAL when they cannot
 * begin a valid header. Never reads past buf[n - 1]. */
int pp_parse(const uint8_t *buf, size_t n, struct pp_info *out);

#endif
