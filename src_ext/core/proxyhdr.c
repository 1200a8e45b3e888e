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

/* Parsing (accept_proxy). The relay peeks at a new client's first bytes and calls pp_parse()
 * until it has a verdict; only then does it consume exactly out->len bytes, so the client's
 * own bytes stay queued for the relay (relay_tcp.c, "Receiving the PROXY protocol"). The rules
 * are the specification's, read strictly, and the Python twin (l4lb/proxyproto.py, parse())
 * follows the same steps so that both give the same verdict on any input:
 *   version 1: "PROXY " then "TCP4 ", "TCP6 " or "UNKNOWN"; at most 107 bytes with the CRLF,
 *     which must be the first CR or LF of the line. TCP4/TCP6 take exactly four fields
 *     separated by single spaces: two addresses of that family, two ports. IPv4 is a dotted
 *     quad of decimal octets 0..255 without leading zeros; IPv6 is RFC 4291 text (groups of
 *     one to four hex digits, at most one "::", an optional dotted quad as the last 32 bits,
 *     no zone). Ports are 0..65535 in decimal without leading zeros. After UNKNOWN anything
 *     up to the CRLF is ignored, as the specification asks.
 *   version 2: the 12-byte signature, version 2, command LOCAL or PROXY. LOCAL ignores the
 *     family byte and the address block (the connection's own addresses are used: an upstream
 *     health check). PROXY takes only the family/transport values the specification defines
 *     and a length that covers their address block; TCP over IPv4 / IPv6 gives the addresses,
 *     UNSPEC, UNIX and DGRAM use the connection's own ones, as HAProxy does. TLVs are not
 *     read: out->len covers them and the caller skips them by count.
 * Early verdicts: bytes that cannot begin either signature are rejected at once, so a client
 * that does not speak the protocol is refused on its first segment instead of at the timeout.
 */
static const char pp_v1_sig[6] = { 'P', 'R', 'O', 'X', 'Y', ' ' };

/* Parse a dotted quad (exactly n chars) into out[4]; 0 or -1. */
static int pp_parse_v4(const char *s, size_t n, uint8_t *out)
{
    size_t i = 0, start;
    unsigned v;
    int part;

    for (part = 0; part < 4; part++) {
        if (part) {
            if (i >= n || s[i] != '.')
                return -1;
            i++;
        }
        start = i;
        v = 0;
        while (i < n && i - start < 3 && s[i] >= '0' && s[i] <= '9')
            v = v * 10 + (unsigned)(s[i++] - '0');
        if (i == start || (i - start > 1 && s[start] == '0') || v > 255)
            return -1;
        out[part] = (uint8_t)v;
    }
    return i == n ? 0 : -1;
}

/* Value of a hex digit, or -1. */
static int pp_hex(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Parse RFC 4291 IPv6 text (exactly n chars) into out[16]; 0 or -1. */
static int pp_parse_v6(const char *s, size_t n, uint8_t *out)
{
    unsigned g[8];
    int ng = 0, gap = -1, k;
    size_t i = 0, end, j;

    if (n >= 2 && s[0] == ':' && s[1] == ':') {
        gap = 0;
        i = 2;
    }
    while (i < n || (gap < 0 && ng == 0)) {
        for (end = i; end < n && s[end] != ':'; end++)
            ;
        if (memchr(s + i, '.', end - i)) { /* a dotted quad: the last 32 bits */
            uint8_t q[4];
            if (end != n || ng > 6 || pp_parse_v4(s + i, end - i, q) < 0)
                return -1;
            g[ng++] = (unsigned)q[0] << 8 | q[1];
            g[ng++] = (unsigned)q[2] << 8 | q[3];
            break;
        }
        if (end == i || end - i > 4 || ng >= 8)
            return -1;
        g[ng] = 0;
        for (j = i; j < end; j++) {
            if ((k = pp_hex(s[j])) < 0)
                return -1;
            g[ng] = g[ng] << 4 | (unsigned)k;
        }
        ng++;
        if (end == n)
            break;
        if (end + 1 < n && s[end + 1] == ':') {
            if (gap >= 0)
                return -1;
            gap = ng;
            i = end + 2;
            continue;
        }
        i = end + 1;
        if (i == n)
            return -1; /* a single trailing colon */
    }
    if (gap >= 0 ? ng > 7 : ng != 8)
        return -1;
    memset(out, 0, 16);
    for (k = 0; k < ng; k++) {
        int at = gap >= 0 && k >= gap ? k + 8 - ng : k;
        out[2 * at] = (uint8_t)(g[k] >> 8);
        out[2 * at + 1] = (uint8_t)g[k];
    }
    return 0;
}

/* Parse a port (exactly n chars): decimal 0..65535, no leading zero; 0 or -1. */
static int pp_parse_port(const char *s, size_t n, uint16_t *out)
{
    unsigned v = 0;
    size_t i;

    if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
        return -1;
    for (i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > 65535)
        return -1;
    *out = (uint16_t)v;
    return 0;
}

/* Version 1 (buf starts with "PROXY "; see pp_parse). */
static int pp_parse_v1(const uint8_t *buf, size_t n, struct pp_info *out)
{
    const char *line = (const char *)buf + sizeof(pp_v1_sig);
    const char *f[4];
    size_t i, len, flen[4], at;
    int k;

    for (i = 0; i < n && i < PP_V1_MAX; i++) {
        if (buf[i] == '\n')
            return -EINVAL;
        if (buf[i] == '\r')
            break;
    }
    if (i == n || i == PP_V1_MAX)
        return n >= PP_V1_MAX ? -EINVAL : 0;
    if (i + 2 > PP_V1_MAX)
        return -EINVAL;
    if (i + 1 == n)
        return 0;
    if (buf[i + 1] != '\n')
        return -EINVAL;
    len = i - sizeof(pp_v1_sig); /* the line between "PROXY " and the CRLF */
    memset(out, 0, sizeof(*out));
    out->len = (uint32_t)(i + 2);
    out->version = 1;
    if (len >= 7 && memcmp(line, "UNKNOWN", 7) == 0 && (len == 7 || line[7] == ' '))
        return 1;
    if (len < 5 || (memcmp(line, "TCP4 ", 5) != 0 && memcmp(line, "TCP6 ", 5) != 0))
        return -EINVAL;
    at = 5;
    for (k = 0; k < 4; k++) {
        f[k] = line + at;
        while (at < len && line[at] != ' ')
            at++;
        flen[k] = (size_t)(line + at - f[k]);
        if (k < 3) {
            if (at == len)
                return -EINVAL;
            at++; /* the single space; an empty field below rejects a second one */
        }
    }
    if (at != len)
        return -EINVAL;
    out->family = line[3] == '4' ? 4 : 6;
    if (out->family == 4 ? pp_parse_v4(f[0], flen[0], out->src) < 0 ||
                               pp_parse_v4(f[1], flen[1], out->dst) < 0
                         : pp_parse_v6(f[0], flen[0], out->src) < 0 ||
                               pp_parse_v6(f[1], flen[1], out->dst) < 0)
        return -EINVAL;
    if (pp_parse_port(f[2], flen[2], &out->sport) < 0 ||
        pp_parse_port(f[3], flen[3], &out->dport) < 0)
        return -EINVAL;
    return 1;
}

/* Version 2 (buf starts with the signature's first byte; see pp_parse). */
static int pp_parse_v2(const uint8_t *buf, size_t n, struct pp_info *out)
{
    size_t need, alen;
    uint32_t blen;
    uint8_t fam;

    if (memcmp(buf, pp_v2_sig, n < 12 ? n : 12) != 0)
        return -EINVAL;
    if (n > 12 && ((buf[12] >> 4) != 2 || (buf[12] & 0x0f) > 1))
        return -EINVAL; /* version 2 only; commands LOCAL (0) and PROXY (1) only */
    if (n < PP_V2_HDR)
        return 0;
    blen = (uint32_t)buf[14] << 8 | buf[15];
    fam = buf[13];
    memset(out, 0, sizeof(*out));
    out->len = PP_V2_HDR + blen;
    out->version = 2;
    if ((buf[12] & 0x0f) == 0)
        return 1; /* LOCAL: the family and the address block are ignored */
    switch (fam) {
    case 0x00: /* UNSPEC */
        return 1;
    case 0x11: /* TCP over IPv4 */
    case 0x12: /* UDP over IPv4 */
        alen = 12;
        break;
    case 0x21: /* TCP over IPv6 */
    case 0x22: /* UDP over IPv6 */
        alen = 36;
        break;
    case 0x31: /* UNIX stream */
    case 0x32: /* UNIX datagram */
        alen = 216;
        break;
    default:
        return -EINVAL;
    }
    if (blen < alen)
        return -EINVAL;
    if (fam != 0x11 && fam != 0x21)
        return 1; /* no TCP address to use: the connection's own */
    need = PP_V2_HDR + alen;
    if (n < need)
        return 0;
    alen = fam == 0x11 ? 4 : 16;
    out->family = fam == 0x11 ? 4 : 6;
    memcpy(out->src, buf + PP_V2_HDR, alen);
    memcpy(out->dst, buf + PP_V2_HDR + alen, alen);
    out->sport = (uint16_t)(buf[PP_V2_HDR + 2 * alen] << 8 | buf[PP_V2_HDR + 2 * alen + 1]);
    out->dport = (uint16_t)(buf[PP_V2_HDR + 2 * alen + 2] << 8 | buf[PP_V2_HDR + 2 * alen + 3]);
    return 1;
}

int pp_parse(const uint8_t *buf, size_t n, struct pp_info *out)
{
    if (n == 0)
        return 0;
    if (buf[0] == pp_v2_sig[0])
        return pp_parse_v2(buf, n, out);
    if (memcmp(buf, pp_v1_sig, n < sizeof(pp_v1_sig) ? n : sizeof(pp_v1_sig)) != 0)
        return -EINVAL;
    if (n < sizeof(pp_v1_sig))
        return 0;
    return pp_parse_v1(buf, n, out);
}
