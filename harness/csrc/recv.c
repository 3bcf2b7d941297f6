/*
 * harness._recv: the hot loop of the RAM record walk (harness/protocol/ram_walk.py), compiled.
 *
 * Strategy: walk(mode, buf, pos, end, ram, used, present) consumes, from buf[pos:end], the
 * records the Python walker would hand to its sink's fast path -- CONTINUE page records
 * (RAM_SAVE_FLAG_PAGE|CONTINUE, 8 + 4096 bytes) and CONTINUE zero records
 * (RAM_SAVE_FLAG_ZERO|CONTINUE, 9 bytes) of the current block, with an offset below `used`
 * and whole in the buffer -- and stops at the first record it does not handle (a named
 * block, XBZRLE, compressed, EOS, MEM_SIZE, bad flags, an offset out of range, a partial
 * record, a zero record with a non-zero fill byte when placing), leaving that record to
 * the Python walker and its checks and messages.  The record layout and the handling of a
 * zero page (written only when the page is not zero already, the `buffer_is_zero` test)
 * mirror QEMU 7.2's migration/ram.c (ram_load_precopy, ram_load_postcopy,
 * ram_handle_compressed); no QEMU code is used.
 *
 * Modes: 0 place (copy pages, zero-fill zero pages), 1 place once (postcopy: a page whose
 * byte in `present` is set is skipped and counted as a duplicate; otherwise its content is
 * written first, then its mark, after a release fence), 2 discard (locate only: `ram` is
 * None).  Returns (stop position, offsets: bytes of native uint64, kinds: bytes of native
 * uint16, starts: bytes of native int64 record positions in mode 2 else None, duplicates).
 * Every access is bounds-checked against the buffers' lengths; the GIL is released while
 * the buffers are held and the loop runs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef HARNESS_SOURCE_HASH
#define HARNESS_SOURCE_HASH "unknown"
#endif

#define PAGE 4096u
#define FLAG_MASK ((uint64_t)PAGE - 1)
#define F_ZERO 0x02u
#define F_PAGE 0x08u
#define F_CONTINUE 0x20u
#define PAGE_CONT (F_PAGE | F_CONTINUE)
#define ZERO_CONT (F_ZERO | F_CONTINUE)
#define PAGE_RECORD ((Py_ssize_t)(8 + PAGE))
#define ZERO_RECORD ((Py_ssize_t)9)

enum { MODE_PLACE = 0, MODE_ONCE = 1, MODE_DISCARD = 2 };

typedef struct {
    uint64_t *offsets;
    uint16_t *kinds;
    int64_t *starts; /* NULL unless mode 2 */
    size_t n, cap;
} Out;

typedef struct {
    const unsigned char *buf;
    Py_ssize_t pos, end;
    unsigned char *ram;
    Py_ssize_t ram_len;
    uint64_t used;
    unsigned char *present;
    Py_ssize_t present_len;
    int mode;
    long long duplicates;
    int nomem;
} Walk;

static uint64_t load_be64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

static int page_is_zero(const unsigned char *p)
{
    uint64_t acc = 0, w;
    for (unsigned at = 0; at < PAGE; at += 64) {
        for (unsigned j = 0; j < 64; j += 8) {
            memcpy(&w, p + at + j, 8);
            acc |= w;
        }
        if (acc)
            return 0;
    }
    return 1;
}

static int out_grow(Out *o)
{
    size_t cap = o->cap ? o->cap * 2 : 1024;
    uint64_t *offsets = realloc(o->offsets, cap * sizeof *offsets);
    if (!offsets)
        return -1;
    o->offsets = offsets;
    uint16_t *kinds = realloc(o->kinds, cap * sizeof *kinds);
    if (!kinds)
        return -1;
    o->kinds = kinds;
    if (o->starts) {
        int64_t *starts = realloc(o->starts, cap * sizeof *starts);
        if (!starts)
            return -1;
        o->starts = starts;
    }
    o->cap = cap;
    return 0;
}

static int out_push(Out *o, uint64_t offset, uint16_t kind, Py_ssize_t start)
{
    if (o->n == o->cap && out_grow(o) < 0)
        return -1;
    o->offsets[o->n] = offset;
    o->kinds[o->n] = kind;
    if (o->starts)
        o->starts[o->n] = (int64_t)start;
    o->n++;
    return 0;
}

/* Place (modes 0, 1) the record at w->pos; returns 1 to record it, 0 when it is a
 * duplicate, -1 to stop before it. */
static int place(Walk *w, unsigned flags, uint64_t addr)
{
    if (addr > (uint64_t)w->ram_len || (uint64_t)w->ram_len - addr < PAGE)
        return -1;
    Py_ssize_t page = (Py_ssize_t)(addr / PAGE);
    if (w->mode == MODE_ONCE) {
        if (page >= w->present_len)
            return -1;
        if (w->present[page]) {
            w->duplicates++;
            return 0;
        }
    }
    unsigned char *dst = w->ram + addr;
    if (flags == PAGE_CONT)
        memcpy(dst, w->buf + w->pos + 8, PAGE);
    else if (!page_is_zero(dst))
        memset(dst, 0, PAGE);
    if (w->mode == MODE_ONCE) {
        atomic_thread_fence(memory_order_release); /* the content before the mark */
        w->present[page] = 1;
    }
    return 1;
}

/* The loop: runs without the GIL. */
static void run(Walk *w, Out *o)
{
    while (w->end - w->pos >= 8) {
        uint64_t word = load_be64(w->buf + w->pos);
        unsigned flags = (unsigned)(word & FLAG_MASK);
        uint64_t addr = word ^ flags;
        Py_ssize_t stride;
        if (flags == PAGE_CONT)
            stride = PAGE_RECORD;
        else if (flags == ZERO_CONT)
            stride = ZERO_RECORD;
        else
            break;
        if (addr >= w->used || w->end - w->pos < stride)
            break;
        if (w->mode != MODE_DISCARD) {
            if (flags == ZERO_CONT && w->buf[w->pos + 8] != 0)
                break; /* a fill byte: the Python walker writes it */
            int placed = place(w, flags, addr);
            if (placed < 0)
                break;
            if (placed == 0) {
                w->pos += stride;
                continue;
            }
        }
        if (out_push(o, addr, (uint16_t)(flags & ~F_CONTINUE), w->pos) < 0) {
            w->nomem = 1;
            break;
        }
        w->pos += stride;
    }
}

static PyObject *bytes_of(const void *data, size_t n)
{
    return PyBytes_FromStringAndSize(n ? (const char *)data : "", (Py_ssize_t)n);
}

static PyObject *result(const Walk *w, const Out *o)
{
    PyObject *offsets = bytes_of(o->offsets, o->n * sizeof(uint64_t));
    PyObject *kinds = bytes_of(o->kinds, o->n * sizeof(uint16_t));
    PyObject *starts = w->mode == MODE_DISCARD ? bytes_of(o->starts, o->n * sizeof(int64_t))
                                               : (Py_INCREF(Py_None), Py_None);
    PyObject *ret = NULL;
    if (offsets && kinds && starts)
        ret = Py_BuildValue("(nOOOL)", w->pos, offsets, kinds, starts, w->duplicates);
    Py_XDECREF(offsets);
    Py_XDECREF(kinds);
    Py_XDECREF(starts);
    return ret;
}

static int get_buffer(PyObject *obj, Py_buffer *view, int writable, const char *what)
{
    if (PyObject_GetBuffer(obj, view, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE) < 0) {
        PyErr_Format(PyExc_TypeError, "walk: %s must be a contiguous%s buffer", what,
                     writable ? " writable" : "");
        return -1;
    }
    return 0;
}

static int check_args(Walk *w, Py_ssize_t buf_len, Py_ssize_t used)
{
    if (w->mode < MODE_PLACE || w->mode > MODE_DISCARD) {
        PyErr_SetString(PyExc_ValueError, "walk: mode must be 0, 1 or 2");
        return -1;
    }
    if (w->pos < 0 || w->end < w->pos || w->end > buf_len) {
        PyErr_SetString(PyExc_ValueError, "walk: need 0 <= pos <= end <= len(buf)");
        return -1;
    }
    if (used < 0) {
        PyErr_SetString(PyExc_ValueError, "walk: used must not be negative");
        return -1;
    }
    return 0;
}

static PyObject *walk(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *buf_obj, *ram_obj, *present_obj;
    Py_ssize_t used;
    Walk w;
    memset(&w, 0, sizeof w);
    if (!PyArg_ParseTuple(args, "iOnnOnO:walk", &w.mode, &buf_obj, &w.pos, &w.end, &ram_obj,
                          &used, &present_obj))
        return NULL;
    Py_buffer bv, rv, pv;
    int have_ram = 0, have_present = 0;
    if (get_buffer(buf_obj, &bv, 0, "buf") < 0)
        return NULL;
    PyObject *ret = NULL;
    Out o = {0};
    if (check_args(&w, bv.len, used) < 0)
        goto done;
    w.buf = bv.buf;
    w.used = (uint64_t)used;
    if (w.mode != MODE_DISCARD) {
        if (get_buffer(ram_obj, &rv, 1, "ram") < 0)
            goto done;
        have_ram = 1;
        w.ram = rv.buf;
        w.ram_len = rv.len;
    }
    if (w.mode == MODE_ONCE) {
        if (get_buffer(present_obj, &pv, 1, "present") < 0)
            goto done;
        have_present = 1;
        w.present = pv.buf;
        w.present_len = pv.len;
    }
    if (w.mode == MODE_DISCARD && !(o.starts = malloc(sizeof(int64_t)))) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    run(&w, &o);
    Py_END_ALLOW_THREADS
    if (w.nomem)
        PyErr_NoMemory();
    else
        ret = result(&w, &o);
done:
    free(o.offsets);
    free(o.kinds);
    free(o.starts);
    if (have_present)
        PyBuffer_Release(&pv);
    if (have_ram)
        PyBuffer_Release(&rv);
    PyBuffer_Release(&bv);
    return ret;
}

static PyMethodDef methods[] = {
    {"walk", walk, METH_VARARGS,
     "walk(mode, buf, pos, end, ram, used, present) -> (pos, offsets, kinds, starts, dups)\n"
     "Consume CONTINUE page/zero records of one block; see harness/protocol/ram_walk.py."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "harness._recv",
    "The compiled hot loop of the RAM record walk (harness/protocol/ram_walk.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__recv(void)
{
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    if (PyModule_AddStringConstant(m, "SOURCE_HASH", HARNESS_SOURCE_HASH) < 0 ||
        PyModule_AddIntConstant(m, "MODE_PLACE", MODE_PLACE) < 0 ||
        PyModule_AddIntConstant(m, "MODE_ONCE", MODE_ONCE) < 0 ||
        PyModule_AddIntConstant(m, "MODE_DISCARD", MODE_DISCARD) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
