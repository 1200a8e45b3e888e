/* proxyhdr.h: PROXY protocol headers (versions 1 and 2) written ahead of a relayed connection.
 *
 * Pure functions, no I/O: the TCP relay calls them once per backend connection of a service
 * with `proxy_protocol`, the Cython module exposes them so that the tests hold them to their
 * Python twin (l4lb/proxyproto.py) byte for byte.
 */
#ifndef L4LB_PROXYHDR_H
#define L4LB_PROXYHDR_H

#include <stddef.h>
#include <stdint.h>

#define PP_V1_MAX 107u             /* longest version 1 header, CRLF included */
#define PP_V2_MAX 52u              /* longest version 2 header written here (TCP over IPv6) */
#define PP_MAX PP_V1_MAX           /* a buffer this large holds either version */

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

#endif
