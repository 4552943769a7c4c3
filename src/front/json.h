/* A strict JSON reader, comparer and writer for the front's agent path.
 *
 * It accepts a subset of what the plugin's JSON engine (istio_cni._fastpath.json_loads, the
 * standard library's) accepts, and whatever it accepts it reads to the same values: valid UTF-8
 * only, no lone surrogate escapes, no duplicate keys in an object, no NaN/Infinity, bounded
 * depth and size. Anything else is refused (-1) and the front hands the ADD over to the plugin,
 * which decides with its own reader. The writer prints what json_dumps prints (compact
 * separators, ASCII only with lower-case \uXXXX escapes) for documents without fractions: a
 * float is refused rather than formatted differently from Python's repr.
 */
#ifndef ISTIO_CNI_FRONT_JSON_H
#define ISTIO_CNI_FRONT_JSON_H

#include <stddef.h>

enum jtype { J_NULL, J_FALSE, J_TRUE, J_INT, J_FLOAT, J_STR, J_ARR, J_OBJ };

struct jnode {
    enum jtype type;
    int first; /* ARR/OBJ: first child, -1 if empty */
    int next;  /* next sibling, -1 if last */
    int count; /* ARR/OBJ: number of children */
    const char *s; /* STR: decoded UTF-8 (may hold NUL); INT/FLOAT: the number's text */
    size_t len;
    const char *key; /* member of an OBJ: its decoded key */
    size_t klen;
};

struct jdoc {
    struct jnode *nodes;
    int n, cap;
    char *strs; /* decoded strings, never longer than the text */
    size_t used;
};

#define JSON_MAX_NODES 16384
#define JSON_MAX_DEPTH 64
#define JSON_MAX_MEMBERS 512

/* Parse text[0..len) as one JSON document into doc (root is node 0). 0, or -1 refused. */
int json_parse(struct jdoc *doc, const char *text, size_t len);
void json_free(struct jdoc *doc);

/* The member `key` of object node `obj`, or -1. */
int json_member(const struct jdoc *doc, int obj, const char *key);
/* Is node i the string `s`? */
int json_is_str(const struct jdoc *doc, int i, const char *s);

/* Equal as the plugin compares them (Python ==), but stricter: types must match exactly
 * (1 is not 1.0, nor true), object members in the same order. 1 equal, 0 not. */
int json_equal(const struct jdoc *a, int i, const struct jdoc *b, int j);

/* Is s[0..len) valid UTF-8 (no overlong forms, no surrogates, at most U+10FFFF)? */
int utf8_valid(const char *s, size_t len);

/* A growing output buffer with a hard cap. */
struct out {
    char *buf;
    size_t len, cap, max;
    int failed;
};
void out_put(struct out *o, const char *s, size_t n);
void out_str(struct out *o, const char *s); /* raw text */
/* s[0..len) (valid UTF-8) as a JSON string, escaped exactly as json_dumps escapes it. */
void out_json_string(struct out *o, const char *s, size_t len);
/* Node i as json_dumps writes it; -1 if it holds a float (or the output is over its cap). */
int json_write(struct out *o, const struct jdoc *doc, int i);

#endif
