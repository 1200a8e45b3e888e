/* proxyhdr.c: builds PROXY protocol headers, the C twin of l4lb/proxyproto.py.
 *
 * Design. A backend behind an L4 balancer sees the balancer's address as its client. The PROXY
 * protocol (HAProxy's proxy-protocol.txt, spoken by nginx, HAProxy, Postfix, Dovecot and most
 * servers an operator puts behind one) fixes that with one header before the client's first
 * byte: the client's address and port and the address and port it connected to. Version 1 is a
 * line of text, version 2 a binary block with a 12-byte signature; a service chooses one, since
 * a receiver expects exactly the version it was configured for.
 *
 * The relay builds the header once per backend connection (not per retry of a byte) into a
 * stack buffer and sends it ahead of the client's data (relay_tcp.c, "PROXY protocol"), so the
 * header costs nothing on a session that does not ask for it and holds no memory in a session
 * that does. What is written must match the Python twin exactly, including the text form of
 * IPv6 addresses in version 1: the formatter below follows RFC 5952 (lowercase hex, no leading
 * zeros, the first longest run of two or more zero groups as "::") rather than calling
 * inet_ntop, whose glibc version prints "::a.b.c.d" for some addresses where Python prints hex.
 * An IPv4-mapped pair (an IPv4 client of a dual-stack listener) is written as IPv4. Version 2
 * carries no TLV.
 */
#include <errno.h>
#include <string.h>

#include "proxyhdr.h"

static const uint8_t pp_v2_sig[12] = { 0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                       0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a };
static const uint8_t pp_mapped_prefix[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

/* Append the decimal text of v at p; returns the new end. */
static char *pp_put_dec(char *p, unsigned v)
{
    char tmp[10];
    int n = 0;

    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *p++ = tmp[--n];
    return p;
}

/* Append the dotted-quad text of a (4 bytes). */
static char *pp_put_v4(char *p, const uint8_t *a)
{
    int i;

    for (i = 0; i < 4; i++) {
        if (i)
            *p++ = '.';
        p = pp_put_dec(p, a[i]);
    }
    return p;
}

/* Append the RFC 5952 text of a (16 bytes). */
static char *pp_put_v6(char *p, const uint8_t *a)
{
    static const char hex[] = "0123456789abcdef";
    unsigned g[8];
    int i, best = -1, best_len = 0, run = -1, run_len = 0;

    for (i = 0; i < 8; i++)
        g[i] = (unsigned)a[2 * i] << 8 | a[2 * i + 1];
    for (i = 0; i < 8; i++) {
        if (g[i] == 0) {
            if (run < 0) {
                run = i;
                run_len = 0;
            }
            if (++run_len > best_len) {
                best = run;
                best_len = run_len;
            }
        } else {
            run = -1;
        }
    }
    if (best_len < 2)
        best = -1;
    for (i = 0; i < 8; i++) {
        if (i == best) {
            *p++ = ':';
            *p++ = ':';
            i += best_len - 1;
            continue;
        }
        if (i && i != best + best_len)
            *p++ = ':';
        int shift, started = 0;
        for (shift = 12; shift >= 0; shift -= 4) {
            unsigned d = (g[i] >> shift) & 0xf;
            if (d || started || shift == 0) {
                *p++ = hex[d];
                started = 1;
            }
        }
    }
    return p;
}

/* A version 2 header without addresses (AF_UNSPEC): command 0x20 LOCAL or 0x21 PROXY. */
static int pp_v2_unspec(uint8_t *out, size_t cap, uint8_t command)
{
    if (cap < 16)
        return -ENOSPC;
    memcpy(out, pp_v2_sig, 12);
    out[12] = command;
    out[13] = 0x00; /* AF_UNSPEC */
    out[14] = 0;
    out[15] = 0;
    return 16;
}

int pp_build_local(uint8_t *out, size_t cap, int version)
{
    static const char v1[] = "PROXY UNKNOWN\r\n";

    if (version == 1) {
        if (cap < sizeof(v1) - 1)
            return -ENOSPC;
        memcpy(out, v1, sizeof(v1) - 1);
        return (int)(sizeof(v1) - 1);
    }
    if (version != 2)
        return -EINVAL;
    return pp_v2_unspec(out, cap, 0x20); /* version 2, LOCAL */
}

int pp_build(uint8_t *out, size_t cap, int version, int family, const uint8_t *src,
             uint16_t sport, const uint8_t *dst, uint16_t dport)
{
    char text[PP_V1_MAX];
    char *p = text;
    size_t alen, n;

    if ((version != 1 && version != 2) || (family != 4 && family != 6))
        return -EINVAL;
    if (family == 6 && memcmp(src, pp_mapped_prefix, 12) == 0 &&
        memcmp(dst, pp_mapped_prefix, 12) == 0) {
        family = 4;
        src += 12;
        dst += 12;
    } else if (family == 6 && (memcmp(src, pp_mapped_prefix, 12) == 0) !=
                                  (memcmp(dst, pp_mapped_prefix, 12) == 0)) {
        /* one IPv4 and one IPv6 address: not expressible as a pair of one family */
        if (version == 1)
            return pp_build_local(out, cap, 1); /* "PROXY UNKNOWN" */
        return pp_v2_unspec(out, cap, 0x21);    /* version 2, PROXY, no addresses */
    }
    if (version == 2) {
        alen = family == 4 ? 4 : 16;
        n = 16 + 2 * alen + 4;
        if (cap < n)
            return -ENOSPC;
        memcpy(out, pp_v2_sig, 12);
        out[12] = 0x21;                       /* version 2, PROXY */
        out[13] = family == 4 ? 0x11 : 0x21;  /* AF_INET(6), SOCK_STREAM */
        out[14] = (uint8_t)((n - 16) >> 8);
        out[15] = (uint8_t)(n - 16);
        memcpy(out + 16, src, alen);
        memcpy(out + 16 + alen, dst, alen);
        out[16 + 2 * alen] = (uint8_t)(sport >> 8);
        out[17 + 2 * alen] = (uint8_t)sport;
        out[18 + 2 * alen] = (uint8_t)(dport >> 8);
        out[19 + 2 * alen] = (uint8_t)dport;
        return (int)n;
    }
    memcpy(p, family == 4 ? "PROXY TCP4 " : "PROXY TCP6 ", 11);
    p += 11;
    p = family == 4 ? pp_put_v4(p, src) : pp_put_v6(p, src);
    *p++ = ' ';
    p = family == 4 ? pp_put_v4(p, dst) : pp_put_v6(p, dst);
    *p++ = ' ';
    p = pp_put_dec(p, sport);
    *p++ = ' ';
    p = pp_put_dec(p, dport);
    *p++ = '\r';
    *p++ = '\n';
    n = (size_t)(p - text);
    if (cap < n)
        return -ENOSPC;
    memcpy(out, text, n);
    return (int)n;
}
