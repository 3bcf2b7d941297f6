/*
 * harness._send: framing page records out of guest RAM (harness/protocol/ram_saver.py), compiled.
 *
 * Strategy: a batch of pages of one block becomes ZERO records (8-byte header + one fill
 * byte 0) and PAGE records (8-byte header + the 4096 bytes of the page), in the order
 * given; every record but the first carries RAM_SAVE_FLAG_CONTINUE, and the first names
 * the block (u8 length + idstr after its header) when the caller says the block is not
 * the last one sent.  The layout is QEMU 7.2's migration/ram.c (save_page_header,
 * save_zero_page_to_file, save_normal_page); no QEMU code is used.  A page is a zero page
 * when every byte is zero (util/bufferiszero.c's buffer_is_zero test).
 *
 * One generator (`next_segment`) walks the records as segments -- a span of the header
 * scratch (consecutive headers and zero records are adjacent there, so they merge) or a
 * page of RAM -- and both outputs are fed from it, so they cannot differ:
 *   classify(mem, pages, zero) -> zero pages: tests each page whose flag is 0 and sets it
 *       to 1 when the page is all zero; a flag already 1 (a hole of sparse RAM) is trusted
 *       and the page is not read (reading a hole would allocate it).
 *   frame(out, offset, mem, pages, zero, name) -> end: copies the records into the writable
 *       buffer `out` from `offset` (there must be room: ValueError otherwise).
 *   send(fd, flags, mem, pages, zero, name, done) -> bytes: one sendmsg (flags >= 0) or
 *       writev (flags < 0) of the records from byte `done` on, with iovecs straight from
 *       RAM (no copy of a page in user space), at most IOV_MAX of them; raises OSError
 *       (BlockingIOError when a non-blocking fd is full) like socket.sendmsg.
 * `name` is the block's idstr (bytes) when the first record names it, else None.  Every
 * page index is checked against the RAM's length first; the GIL is released while the
 * buffers are held and the loop or the syscall runs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#ifndef HARNESS_SOURCE_HASH
#define HARNESS_SOURCE_HASH "unknown"
#endif

#define PAGE 4096u
#define F_ZERO 0x02u
#define F_PAGE 0x08u
#define F_CONTINUE 0x20u
#define MAX_IOV 1024 /* Linux UIO_MAXIOV */

/* The buffers of one call, held until release(). */
typedef struct {
    Py_buffer mem, pages, zero, name;
    int have_mem, have_pages, have_zero, have_name;
    const int64_t *idx;
    unsigned char *flags;
    Py_ssize_t n, npages;
    unsigned char *scratch; /* every record's header (and a zero record's fill byte) */
    Py_ssize_t *hdr_at;     /* where each record's header starts in scratch, n + 1 entries */
} Batch;

static void release(Batch *b)
{
    if (b->have_mem) PyBuffer_Release(&b->mem);
    if (b->have_pages) PyBuffer_Release(&b->pages);
    if (b->have_zero) PyBuffer_Release(&b->zero);
    if (b->have_name) PyBuffer_Release(&b->name);
    PyMem_RawFree(b->scratch);
    PyMem_RawFree(b->hdr_at);
    b->scratch = NULL;
    b->hdr_at = NULL;
}

static int page_is_zero(const unsigned char *p)
{
    uint64_t w0, acc = 0, w;
    memcpy(&w0, p, 8);
    if (w0) /* random data: one word decides */
        return 0;
    for (unsigned at = 8; at < PAGE; at += 8) {
        memcpy(&w, p + at, 8);
        acc |= w;
        if ((at & 511) == 504 && acc)
            return 0;
    }
    return acc == 0;
}

/* Take the buffers; with_zero: the zero flags (uint8, one per page, writable). */
static int hold(Batch *b, PyObject *mem, PyObject *pages, PyObject *zero, PyObject *name)
{
    memset(b, 0, sizeof *b);
    if (PyObject_GetBuffer(mem, &b->mem, PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    b->have_mem = 1;
    if (PyObject_GetBuffer(pages, &b->pages, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return -1;
    b->have_pages = 1;
    if (b->pages.itemsize != 8 || b->pages.format == NULL ||
        strchr("qlQL", b->pages.format[strlen(b->pages.format) - 1]) == NULL) {
        PyErr_SetString(PyExc_TypeError, "pages must be a contiguous array of 64-bit ints");
        return -1;
    }
    if (PyObject_GetBuffer(zero, &b->zero, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0)
        return -1;
    b->have_zero = 1;
    b->n = b->pages.len / 8;
    if (b->zero.len != b->n) {
        PyErr_Format(PyExc_ValueError, "zero flags: %zd for %zd pages", b->zero.len, b->n);
        return -1;
    }
    if (name != Py_None) {
        if (PyObject_GetBuffer(name, &b->name, PyBUF_SIMPLE) < 0)
            return -1;
        b->have_name = 1;
        if (b->name.len < 1 || b->name.len > 255) {
            PyErr_SetString(PyExc_ValueError, "a block name is 1 to 255 bytes");
            return -1;
        }
    }
    b->idx = (const int64_t *)b->pages.buf;
    b->flags = (unsigned char *)b->zero.buf;
    b->npages = b->mem.len / PAGE;
    for (Py_ssize_t i = 0; i < b->n; i++) {
        if (b->idx[i] < 0 || b->idx[i] >= b->npages) {
            PyErr_Format(PyExc_IndexError, "page %lld outside RAM of %zd pages",
                         (long long)b->idx[i], b->npages);
            return -1;
        }
    }
    return 0;
}

static void store_be64(unsigned char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)v;
}

/* Write every record's header (and zero fill byte) into scratch; the flags are final. */
static int headers(Batch *b)
{
    Py_ssize_t name_len = b->have_name ? 1 + b->name.len : 0;
    b->scratch = PyMem_RawMalloc((size_t)(b->n * 9 + name_len + 1));
    b->hdr_at = PyMem_RawMalloc((size_t)(b->n + 1) * sizeof(Py_ssize_t));
    if (b->scratch == NULL || b->hdr_at == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t at = 0;
    for (Py_ssize_t i = 0; i < b->n; i++) {
        int zero = b->flags[i] != 0;
        uint64_t word = (uint64_t)b->idx[i] * PAGE | (zero ? F_ZERO : F_PAGE);
        b->hdr_at[i] = at;
        if (i > 0 || !b->have_name) {
            store_be64(b->scratch + at, word | F_CONTINUE);
            at += 8;
        } else {
            store_be64(b->scratch + at, word);
            b->scratch[at + 8] = (unsigned char)b->name.len;
            memcpy(b->scratch + at + 9, b->name.buf, (size_t)b->name.len);
            at += name_len + 8;
        }
        if (zero)
            b->scratch[at++] = 0;
    }
    b->hdr_at[b->n] = at;
    return 0;
}

/* Bytes of all records. */
static Py_ssize_t total_size(const Batch *b)
{
    Py_ssize_t normal = 0;
    for (Py_ssize_t i = 0; i < b->n; i++)
        normal += b->flags[i] == 0;
    return b->hdr_at[b->n] + normal * (Py_ssize_t)PAGE;
}

/* The segment walk: record i, part 0 (header span) or 1 (page). */
typedef struct {
    Py_ssize_t rec;
    int part;
} Cursor;

/* The next segment at the cursor (0 when there is none): a scratch span that runs over
 * every following record without a page, or one page. */
static size_t next_segment(const Batch *b, Cursor *c, const unsigned char **ptr)
{
    if (c->rec >= b->n)
        return 0;
    if (c->part == 1) {
        *ptr = (const unsigned char *)b->mem.buf + (size_t)b->idx[c->rec] * PAGE;
        c->rec++;
        c->part = 0;
        return PAGE;
    }
    Py_ssize_t start = b->hdr_at[c->rec];
    while (c->rec < b->n && b->flags[c->rec])
        c->rec++;
    Py_ssize_t end = c->rec < b->n ? b->hdr_at[c->rec + 1] : b->hdr_at[b->n];
    if (c->rec < b->n)
        c->part = 1;
    *ptr = b->scratch + start;
    return (size_t)(end - start);
}

static PyObject *classify(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *mem, *pages, *zero;
    Batch b;
    if (!PyArg_ParseTuple(args, "OOO:classify", &mem, &pages, &zero))
        return NULL;
    if (hold(&b, mem, pages, zero, Py_None) < 0) {
        release(&b);
        return NULL;
    }
    Py_ssize_t zeros = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < b.n; i++) {
        if (!b.flags[i])
            b.flags[i] = (unsigned char)page_is_zero(
                (const unsigned char *)b.mem.buf + (size_t)b.idx[i] * PAGE);
        zeros += b.flags[i] != 0;
    }
    Py_END_ALLOW_THREADS
    release(&b);
    return PyLong_FromSsize_t(zeros);
}

static PyObject *frame(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *out, *mem, *pages, *zero, *name;
    Py_ssize_t offset;
    Py_buffer dst;
    Batch b;
    if (!PyArg_ParseTuple(args, "OnOOOO:frame", &out, &offset, &mem, &pages, &zero, &name))
        return NULL;
    if (hold(&b, mem, pages, zero, name) < 0 || headers(&b) < 0) {
        release(&b);
        return NULL;
    }
    if (PyObject_GetBuffer(out, &dst, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) {
        release(&b);
        return NULL;
    }
    Py_ssize_t size = total_size(&b);
    if (offset < 0 || offset > dst.len || dst.len - offset < size) {
        PyErr_Format(PyExc_ValueError, "%zd bytes of records do not fit at %zd of %zd",
                     size, offset, dst.len);
        PyBuffer_Release(&dst);
        release(&b);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    unsigned char *w = (unsigned char *)dst.buf + offset;
    Cursor c = {0, 0};
    const unsigned char *p;
    size_t len;
    while ((len = next_segment(&b, &c, &p)) > 0) {
        memcpy(w, p, len);
        w += len;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&dst);
    release(&b);
    return PyLong_FromSsize_t(offset + size);
}

static PyObject *send_records(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *mem, *pages, *zero, *name;
    int fd, flags;
    Py_ssize_t done;
    Batch b;
    if (!PyArg_ParseTuple(args, "iiOOOOn:send", &fd, &flags, &mem, &pages, &zero, &name,
                          &done))
        return NULL;
    if (hold(&b, mem, pages, zero, name) < 0 || headers(&b) < 0) {
        release(&b);
        return NULL;
    }
    Py_ssize_t size = total_size(&b);
    if (done < 0 || done >= size) {
        PyErr_Format(PyExc_ValueError, "resume at %zd of %zd bytes", done, size);
        release(&b);
        return NULL;
    }
    struct iovec iov[MAX_IOV];
    int count = 0;
    Cursor c = {0, 0};
    const unsigned char *p;
    size_t len, skip = (size_t)done;
    while (count < MAX_IOV && (len = next_segment(&b, &c, &p)) > 0) {
        if (skip >= len) {
            skip -= len;
            continue;
        }
        iov[count].iov_base = (void *)(p + skip);
        iov[count].iov_len = len - skip;
        skip = 0;
        count++;
    }
    ssize_t sent;
    int err;
    Py_BEGIN_ALLOW_THREADS
    if (flags >= 0) {
        struct msghdr msg;
        memset(&msg, 0, sizeof msg);
        msg.msg_iov = iov;
        msg.msg_iovlen = (size_t)count;
        sent = sendmsg(fd, &msg, flags);
    } else {
        sent = writev(fd, iov, count);
    }
    err = errno;
    Py_END_ALLOW_THREADS
    release(&b);
    if (sent < 0) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromSsize_t((Py_ssize_t)sent);
}

static PyMethodDef methods[] = {
    {"classify", classify, METH_VARARGS,
     "classify(mem, pages, zero) -> zero pages: set zero[i] for each all-zero page (a set "
     "flag is trusted and its page not read)."},
    {"frame", frame, METH_VARARGS,
     "frame(out, offset, mem, pages, zero, name) -> end: the records copied into out."},
    {"send", send_records, METH_VARARGS,
     "send(fd, flags, mem, pages, zero, name, done) -> bytes sent by one sendmsg (flags >= "
     "0) or writev (flags < 0) of the records from byte `done` on, straight from RAM."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "harness._send",
    "Page records framed and sent straight from guest RAM (see harness/protocol/ram_saver.py).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__send(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddStringConstant(m, "SOURCE_HASH", HARNESS_SOURCE_HASH) < 0 ||
        PyModule_AddIntConstant(m, "MAX_IOV", MAX_IOV) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
