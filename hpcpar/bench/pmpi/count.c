/* hpcpar's PMPI counting library: calls and bytes per MPI function, per process.
 *
 * Built by hpcpar.bench.counting with the MPI's own compiler wrapper
 * (`mpicc -shared -fPIC`) and loaded into the ranks of a job with LD_PRELOAD.
 * Each wrapper below counts one call, adds the bytes the call moves for this
 * rank, and calls the library's PMPI_ entry point. Python reads the counters
 * with ctypes (hpcpar_count_read) and zeroes them (hpcpar_count_reset); no MPI
 * call is made for that, so reading never disturbs what is measured.
 *
 * What the byte counts mean (per rank, user data, not network traffic, which
 * depends on the MPI library's algorithm):
 *   sent  bytes the call takes from this rank's send buffer: every block for
 *         every destination, its own block included (a Scatter root sends
 *         size blocks; an Allgather sends one block). MPI_IN_PLACE counts the
 *         block the rank contributes from its receive buffer.
 *   recv  bytes the call delivers into this rank's receive buffer, its own
 *         block included (an Allgather receives size blocks, a Bcast root 0).
 * Arguments significant only at the root (Gather's receive side, Scatter's
 * send side) count only on the root. Point-to-point calls count 0 for
 * MPI_PROC_NULL peers; a blocking receive counts the matched message (from its
 * status), a nonblocking one the posted buffer. Every byte count is
 * count x MPI_Type_size(datatype). The large-count `_c` functions of MPI 4
 * have counters of their own, so a reader sees which entry point was used.
 *
 * Counters are per process (all communicators, all threads), updated with
 * relaxed atomic adds.
 */
#include <mpi.h>
#include <stdint.h>
#include <string.h>

#if MPI_VERSION >= 4
#define HPCPAR_LARGE_COUNT 1
#else
#define HPCPAR_LARGE_COUNT 0
#endif

/* ---- the counted functions ------------------------------------------------ */
#define HPCPAR_FUNCS(X)                                                        \
    X(Allgather) X(Allgatherv) X(Allreduce) X(Reduce) X(Bcast) X(Gather)       \
    X(Gatherv) X(Scatter) X(Scatterv) X(Barrier) X(Alltoall) X(Alltoallv)      \
    X(Alltoallw) X(Reduce_scatter_block) X(Send) X(Ssend) X(Isend) X(Issend)   \
    X(Recv) X(Irecv) X(Mrecv) X(Imrecv) X(Sendrecv) X(Sendrecv_replace)        \
    X(Ibarrier) X(Iallreduce) X(Ibcast) X(Iallgather) X(Iallgatherv)           \
    X(Neighbor_allgather) X(Neighbor_alltoall) X(Neighbor_alltoallv)          \
    X(Scan) X(Exscan)

#define HPCPAR_ENUM(name) ID_##name, ID_##name##_c,
enum { HPCPAR_FUNCS(HPCPAR_ENUM) HPCPAR_NFUNCS };

#define HPCPAR_NAME(name) #name, #name "_c",
static const char *const names[HPCPAR_NFUNCS] = { HPCPAR_FUNCS(HPCPAR_NAME) };

static uint64_t n_calls[HPCPAR_NFUNCS];
static uint64_t n_sent[HPCPAR_NFUNCS];
static uint64_t n_recv[HPCPAR_NFUNCS];

/* ---- the interface read with ctypes ---------------------------------------- */
/* Layout version of this interface; hpcpar.bench.counting checks it. */
int hpcpar_count_version(void) { return 1; }

/* Number of counters (functions); each has calls, sent bytes, received bytes. */
int hpcpar_count_nfuncs(void) { return HPCPAR_NFUNCS; }

/* Name of counter i, e.g. "Allgather" or "Allgather_c"; NULL when out of range. */
const char *hpcpar_count_name(int i) { return i >= 0 && i < HPCPAR_NFUNCS ? names[i] : NULL; }

/* Copy the counters into three arrays of hpcpar_count_nfuncs() entries. */
void hpcpar_count_read(uint64_t *calls, uint64_t *sent, uint64_t *recv)
{
    for (int i = 0; i < HPCPAR_NFUNCS; i++) {
        calls[i] = __atomic_load_n(&n_calls[i], __ATOMIC_RELAXED);
        sent[i] = __atomic_load_n(&n_sent[i], __ATOMIC_RELAXED);
        recv[i] = __atomic_load_n(&n_recv[i], __ATOMIC_RELAXED);
    }
}

/* Zero every counter. */
void hpcpar_count_reset(void)
{
    for (int i = 0; i < HPCPAR_NFUNCS; i++) {
        __atomic_store_n(&n_calls[i], 0, __ATOMIC_RELAXED);
        __atomic_store_n(&n_sent[i], 0, __ATOMIC_RELAXED);
        __atomic_store_n(&n_recv[i], 0, __ATOMIC_RELAXED);
    }
}

/* ---- helpers ---------------------------------------------------------------- */
static void note(int id, int64_t sent, int64_t recv)
{
    __atomic_fetch_add(&n_calls[id], 1, __ATOMIC_RELAXED);
    if (sent > 0) __atomic_fetch_add(&n_sent[id], (uint64_t)sent, __ATOMIC_RELAXED);
    if (recv > 0) __atomic_fetch_add(&n_recv[id], (uint64_t)recv, __ATOMIC_RELAXED);
}

static int64_t tsize(MPI_Datatype t)
{
    if (t == MPI_DATATYPE_NULL) return 0;
#if HPCPAR_LARGE_COUNT
    MPI_Count n = 0;
    PMPI_Type_size_c(t, &n);
#else
    MPI_Count n = 0;
    PMPI_Type_size_x(t, &n);
#endif
    return n == MPI_UNDEFINED ? 0 : (int64_t)n;
}

static int my_rank(MPI_Comm c) { int r = 0; PMPI_Comm_rank(c, &r); return r; }

/* The number of ranks a rooted or all-to-all collective exchanges blocks with. */
static int peers(MPI_Comm c)
{
    int inter = 0, n = 0;
    PMPI_Comm_test_inter(c, &inter);
    if (inter) PMPI_Comm_remote_size(c, &n);
    else PMPI_Comm_size(c, &n);
    return n;
}

/* Is this rank the root of a rooted collective (intercommunicators: MPI_ROOT)? */
static int is_root(int root, MPI_Comm c)
{
    int inter = 0;
    PMPI_Comm_test_inter(c, &inter);
    return inter ? root == MPI_ROOT : root == my_rank(c);
}

/* In- and out-degree of a communicator with a topology (neighbourhood collectives). */
static void degrees(MPI_Comm c, int *indeg, int *outdeg)
{
    int kind = MPI_UNDEFINED, n = 0, w = 0;
    *indeg = *outdeg = 0;
    PMPI_Topo_test(c, &kind);
    if (kind == MPI_CART) {
        PMPI_Cartdim_get(c, &n);
        *indeg = *outdeg = 2 * n;
    } else if (kind == MPI_GRAPH) {
        PMPI_Graph_neighbors_count(c, my_rank(c), &n);
        *indeg = *outdeg = n;
    } else if (kind == MPI_DIST_GRAPH) {
        PMPI_Dist_graph_neighbors_count(c, indeg, outdeg, &w);
    }
}

/* Bytes of a received message, from its status; the posted size when unknown. */
static int64_t matched(const MPI_Status *st, MPI_Datatype t, int64_t posted)
{
#if HPCPAR_LARGE_COUNT
    MPI_Count n = 0;
    if (PMPI_Get_count_c(st, t, &n) != MPI_SUCCESS || n == MPI_UNDEFINED) return posted;
    return (int64_t)n * tsize(t);
#else
    int n = 0;
    if (PMPI_Get_count(st, t, &n) != MPI_SUCCESS || n == MPI_UNDEFINED) return posted;
    return (int64_t)n * tsize(t);
#endif
}

#define SUM(counts, n, out)                                                    \
    do { out = 0; if (counts) for (int i_ = 0; i_ < (n); i_++) out += (int64_t)(counts)[i_]; } while (0)

/* ---- the wrappers, written once for int counts and once for MPI_Count ------ */
/* CT: the count type; DT: the displacement type; S: "" or "_c". */
#define HPCPAR_WRAPPERS(CT, DT, S)                                                                 \
int MPI_Allgather##S(const void *sb, CT sc, MPI_Datatype st, void *rb, CT rc, MPI_Datatype rt,    \
                     MPI_Comm comm)                                                                \
{                                                                                                  \
    int64_t blk = (int64_t)rc * tsize(rt);                                                         \
    note(ID_Allgather##S, sb == MPI_IN_PLACE ? blk : (int64_t)sc * tsize(st), blk * peers(comm));  \
    return PMPI_Allgather##S(sb, sc, st, rb, rc, rt, comm);                                        \
}                                                                                                  \
int MPI_Allgatherv##S(const void *sb, CT sc, MPI_Datatype st, void *rb, const CT rcs[],          \
                      const DT dis[], MPI_Datatype rt, MPI_Comm comm)                              \
{                                                                                                  \
    int64_t tot, rs = tsize(rt);                                                                   \
    SUM(rcs, peers(comm), tot);                                                                    \
    note(ID_Allgatherv##S, sb == MPI_IN_PLACE ? (int64_t)rcs[my_rank(comm)] * rs                  \
                                               : (int64_t)sc * tsize(st), tot * rs);               \
    return PMPI_Allgatherv##S(sb, sc, st, rb, rcs, dis, rt, comm);                                 \
}                                                                                                  \
int MPI_Allreduce##S(const void *sb, void *rb, CT n, MPI_Datatype t, MPI_Op op, MPI_Comm comm)    \
{                                                                                                  \
    int64_t b = (int64_t)n * tsize(t);                                                             \
    note(ID_Allreduce##S, b, b);                                                                   \
    return PMPI_Allreduce##S(sb, rb, n, t, op, comm);                                              \
}                                                                                                  \
int MPI_Scan##S(const void *sb, void *rb, CT n, MPI_Datatype t, MPI_Op op, MPI_Comm comm)         \
{                                                                                                  \
    int64_t b = (int64_t)n * tsize(t);                                                             \
    note(ID_Scan##S, b, b);                                                                        \
    return PMPI_Scan##S(sb, rb, n, t, op, comm);                                                   \
}                                                                                                  \
int MPI_Exscan##S(const void *sb, void *rb, CT n, MPI_Datatype t, MPI_Op op, MPI_Comm comm)       \
{                                                                                                  \
    int64_t b = (int64_t)n * tsize(t);                                                             \
    note(ID_Exscan##S, b, my_rank(comm) ? b : 0); /* rank 0's receive buffer is left alone */      \
    return PMPI_Exscan##S(sb, rb, n, t, op, comm);                                                 \
}                                                                                                  \
int MPI_Reduce##S(const void *sb, void *rb, CT n, MPI_Datatype t, MPI_Op op, int root,           \
                  MPI_Comm comm)                                                                   \
{                                                                                                  \
    int64_t b = (int64_t)n * tsize(t);                                                             \
    note(ID_Reduce##S, b, is_root(root, comm) ? b : 0);                                            \
    return PMPI_Reduce##S(sb, rb, n, t, op, root, comm);                                           \
}                                                                                                  \
int MPI_Bcast##S(void *buf, CT n, MPI_Datatype t, int root, MPI_Comm comm)                        \
{                                                                                                  \
    int64_t b = (int64_t)n * tsize(t);                                                             \
    int me = is_root(root, comm);                                                                  \
    note(ID_Bcast##S, me ? b : 0, me ? 0 : b);                                                     \
    return PMPI_Bcast##S(buf, n, t, root, comm);                                                   \
}                                                                                                  \
int MPI_Gather##S(const void *sb, CT sc, MPI_Datatype st, void *rb, CT rc, MPI_Datatype rt,       \
                  int root, MPI_Comm comm)                                                         \
{                                                                                                  \
    int me = is_root(root, comm);                                                                  \
    int64_t blk = me ? (int64_t)rc * tsize(rt) : 0;                                                \
    note(ID_Gather##S, sb == MPI_IN_PLACE ? blk : (int64_t)sc * tsize(st),                         \
         me ? blk * peers(comm) : 0);                                                              \
    return PMPI_Gather##S(sb, sc, st, rb, rc, rt, root, comm);                                     \
}                                                                                                  \
int MPI_Gatherv##S(const void *sb, CT sc, MPI_Datatype st, void *rb, const CT rcs[],             \
                   const DT dis[], MPI_Datatype rt, int root, MPI_Comm comm)                       \
{                                                                                                  \
    int me = is_root(root, comm);                                                                  \
    int64_t tot = 0, rs = me ? tsize(rt) : 0;                                                      \
    if (me) SUM(rcs, peers(comm), tot);                                                            \
    note(ID_Gatherv##S, sb == MPI_IN_PLACE ? (int64_t)rcs[my_rank(comm)] * rs                     \
                                            : (int64_t)sc * tsize(st), tot * rs);                  \
    return PMPI_Gatherv##S(sb, sc, st, rb, rcs, dis, rt, root, comm);                              \
}                                                                                                  \
int MPI_Scatter##S(const void *sb, CT sc, MPI_Datatype st, void *rb, CT rc, MPI_Datatype rt,      \
                   int root, MPI_Comm comm)                                                        \
{                                                                                                  \
    int me = is_root(root, comm);                                                                  \
    int64_t blk = me ? (int64_t)sc * tsize(st) : 0;                                                \
    note(ID_Scatter##S, blk * (me ? peers(comm) : 0),                                              \
         rb == MPI_IN_PLACE ? blk : (int64_t)rc * tsize(rt));                                      \
    return PMPI_Scatter##S(sb, sc, st, rb, rc, rt, root, comm);                                    \
}                                                                                                  \
int MPI_Scatterv##S(const void *sb, const CT scs[], const DT dis[], MPI_Datatype st, void *rb,   \
                    CT rc, MPI_Datatype rt, int root, MPI_Comm comm)                               \
{                                                                                                  \
    int me = is_root(root, comm);                                                                  \
    int64_t tot = 0, ss = me ? tsize(st) : 0;                                                      \
    if (me) SUM(scs, peers(comm), tot);                                                            \
    note(ID_Scatterv##S, tot * ss,                                                                 \
         rb == MPI_IN_PLACE ? (int64_t)scs[my_rank(comm)] * ss : (int64_t)rc * tsize(rt));        \
    return PMPI_Scatterv##S(sb, scs, dis, st, rb, rc, rt, root, comm);                             \
}                                                                                                  \
int MPI_Alltoall##S(const void *sb, CT sc, MPI_Datatype st, void *rb, CT rc, MPI_Datatype rt,     \
                    MPI_Comm comm)                                                                 \
{                                                                                                  \
    int n = peers(comm);                                                                           \
    int64_t r = (int64_t)rc * tsize(rt) * n;                                                       \
    note(ID_Alltoall##S, sb == MPI_IN_PLACE ? r : (int64_t)sc * tsize(st) * n, r);                 \
    return PMPI_Alltoall##S(sb, sc, st, rb, rc, rt, comm);                                         \
}                                                                                                  \
int MPI_Alltoallv##S(const void *sb, const CT scs[], const DT sds[], MPI_Datatype st, void *rb,  \
                     const CT rcs[], const DT rds[], MPI_Datatype rt, MPI_Comm comm)               \
{                                                                                                  \
    int n = peers(comm);                                                                           \
    int64_t s = 0, r = 0;                                                                          \
    SUM(rcs, n, r);                                                                                \
    r *= tsize(rt);                                                                                \
    if (sb == MPI_IN_PLACE) s = r; else { SUM(scs, n, s); s *= tsize(st); }                       \
    note(ID_Alltoallv##S, s, r);                                                                   \
    return PMPI_Alltoallv##S(sb, scs, sds, st, rb, rcs, rds, rt, comm);                            \
}                                                                                                  \
int MPI_Alltoallw##S(const void *sb, const CT scs[], const DT sds[], const MPI_Datatype sts[],   \
                     void *rb, const CT rcs[], const DT rds[], const MPI_Datatype rts[],           \
                     MPI_Comm comm)                                                                \
{                                                                                                  \
    int n = peers(comm);                                                                           \
    int64_t s = 0, r = 0;                                                                          \
    for (int i = 0; i < n; i++) r += (int64_t)rcs[i] * tsize(rts[i]);                              \
    if (sb == MPI_IN_PLACE) s = r;                                                                 \
    else for (int i = 0; i < n; i++) s += (int64_t)scs[i] * tsize(sts[i]);                         \
    note(ID_Alltoallw##S, s, r);                                                                   \
    return PMPI_Alltoallw##S(sb, scs, sds, sts, rb, rcs, rds, rts, comm);                          \
}                                                                                                  \
int MPI_Reduce_scatter_block##S(const void *sb, void *rb, CT rc, MPI_Datatype t, MPI_Op op,      \
                                MPI_Comm comm)                                                     \
{                                                                                                  \
    int64_t b = (int64_t)rc * tsize(t);                                                            \
    note(ID_Reduce_scatter_block##S, b * peers(comm), b);                                          \
    return PMPI_Reduce_scatter_block##S(sb, rb, rc, t, op, comm);                                  \
}                                                                                                  \
int MPI_Send##S(const void *buf, CT n, MPI_Datatype t, int dest, int tag, MPI_Comm comm)          \
{                                                                                                  \
    note(ID_Send##S, dest == MPI_PROC_NULL ? 0 : (int64_t)n * tsize(t), 0);                        \
    return PMPI_Send##S(buf, n, t, dest, tag, comm);                                               \
}                                                                                                  \
int MPI_Ssend##S(const void *buf, CT n, MPI_Datatype t, int dest, int tag, MPI_Comm comm)         \
{                                                                                                  \
    note(ID_Ssend##S, dest == MPI_PROC_NULL ? 0 : (int64_t)n * tsize(t), 0);                       \
    return PMPI_Ssend##S(buf, n, t, dest, tag, comm);                                              \
}                                                                                                  \
int MPI_Isend##S(const void *buf, CT n, MPI_Datatype t, int dest, int tag, MPI_Comm comm,         \
                 MPI_Request *req)                                                                 \
{                                                                                                  \
    note(ID_Isend##S, dest == MPI_PROC_NULL ? 0 : (int64_t)n * tsize(t), 0);                       \
    return PMPI_Isend##S(buf, n, t, dest, tag, comm, req);                                         \
}                                                                                                  \
int MPI_Issend##S(const void *buf, CT n, MPI_Datatype t, int dest, int tag, MPI_Comm comm,        \
                  MPI_Request *req)                                                                \
{                                                                                                  \
    note(ID_Issend##S, dest == MPI_PROC_NULL ? 0 : (int64_t)n * tsize(t), 0);                      \
    return PMPI_Issend##S(buf, n, t, dest, tag, comm, req);                                        \
}                                                                                                  \
int MPI_Recv##S(void *buf, CT n, MPI_Datatype t, int src, int tag, MPI_Comm comm,                 \
                MPI_Status *status)                                                                \
{                                                                                                  \
    MPI_Status own;                                                                                \
    MPI_Status *st = status == MPI_STATUS_IGNORE ? &own : status;                                  \
    int rc = PMPI_Recv##S(buf, n, t, src, tag, comm, st);                                          \
    note(ID_Recv##S, 0, src == MPI_PROC_NULL ? 0 : matched(st, t, (int64_t)n * tsize(t)));        \
    return rc;                                                                                     \
}                                                                                                  \
int MPI_Irecv##S(void *buf, CT n, MPI_Datatype t, int src, int tag, MPI_Comm comm,                \
                 MPI_Request *req)                                                                 \
{                                                                                                  \
    note(ID_Irecv##S, 0, src == MPI_PROC_NULL ? 0 : (int64_t)n * tsize(t));                        \
    return PMPI_Irecv##S(buf, n, t, src, tag, comm, req);                                          \
}                                                                                                  \
int MPI_Mrecv##S(void *buf, CT n, MPI_Datatype t, MPI_Message *msg, MPI_Status *status)           \
{                                                                                                  \
    MPI_Status own;                                                                                \
    MPI_Status *st = status == MPI_STATUS_IGNORE ? &own : status;                                  \
    int nomsg = *msg == MPI_MESSAGE_NO_PROC;                                                       \
    int rc = PMPI_Mrecv##S(buf, n, t, msg, st);                                                    \
    note(ID_Mrecv##S, 0, nomsg ? 0 : matched(st, t, (int64_t)n * tsize(t)));                      \
    return rc;                                                                                     \
}                                                                                                  \
int MPI_Imrecv##S(void *buf, CT n, MPI_Datatype t, MPI_Message *msg, MPI_Request *req)            \
{                                                                                                  \
    note(ID_Imrecv##S, 0, *msg == MPI_MESSAGE_NO_PROC ? 0 : (int64_t)n * tsize(t));                \
    return PMPI_Imrecv##S(buf, n, t, msg, req);                                                    \
}                                                                                                  \
int MPI_Sendrecv##S(const void *sb, CT sc, MPI_Datatype st, int dest, int stag, void *rb, CT rc,  \
                    MPI_Datatype rt, int src, int rtag, MPI_Comm comm, MPI_Status *status)         \
{                                                                                                  \
    MPI_Status own;                                                                                \
    MPI_Status *s = status == MPI_STATUS_IGNORE ? &own : status;                                   \
    int r = PMPI_Sendrecv##S(sb, sc, st, dest, stag, rb, rc, rt, src, rtag, comm, s);              \
    note(ID_Sendrecv##S, dest == MPI_PROC_NULL ? 0 : (int64_t)sc * tsize(st),                      \
         src == MPI_PROC_NULL ? 0 : matched(s, rt, (int64_t)rc * tsize(rt)));                      \
    return r;                                                                                      \
}                                                                                                  \
int MPI_Sendrecv_replace##S(void *buf, CT n, MPI_Datatype t, int dest, int stag, int src,        \
                            int rtag, MPI_Comm comm, MPI_Status *status)                           \
{                                                                                                  \
    MPI_Status own;                                                                                \
    MPI_Status *s = status == MPI_STATUS_IGNORE ? &own : status;                                   \
    int r = PMPI_Sendrecv_replace##S(buf, n, t, dest, stag, src, rtag, comm, s);                   \
    note(ID_Sendrecv_replace##S, dest == MPI_PROC_NULL ? 0 : (int64_t)n * tsize(t),                \
         src == MPI_PROC_NULL ? 0 : matched(s, t, (int64_t)n * tsize(t)));                         \
    return r;                                                                                      \
}                                                                                                  \
int MPI_Iallreduce##S(const void *sb, void *rb, CT n, MPI_Datatype t, MPI_Op op, MPI_Comm comm,   \
                      MPI_Request *req)                                                            \
{                                                                                                  \
    int64_t b = (int64_t)n * tsize(t);                                                             \
    note(ID_Iallreduce##S, b, b);                                                                  \
    return PMPI_Iallreduce##S(sb, rb, n, t, op, comm, req);                                        \
}                                                                                                  \
int MPI_Ibcast##S(void *buf, CT n, MPI_Datatype t, int root, MPI_Comm comm, MPI_Request *req)     \
{                                                                                                  \
    int64_t b = (int64_t)n * tsize(t);                                                             \
    int me = is_root(root, comm);                                                                  \
    note(ID_Ibcast##S, me ? b : 0, me ? 0 : b);                                                    \
    return PMPI_Ibcast##S(buf, n, t, root, comm, req);                                             \
}                                                                                                  \
int MPI_Iallgather##S(const void *sb, CT sc, MPI_Datatype st, void *rb, CT rc, MPI_Datatype rt,   \
                      MPI_Comm comm, MPI_Request *req)                                             \
{                                                                                                  \
    int64_t blk = (int64_t)rc * tsize(rt);                                                         \
    note(ID_Iallgather##S, sb == MPI_IN_PLACE ? blk : (int64_t)sc * tsize(st), blk * peers(comm)); \
    return PMPI_Iallgather##S(sb, sc, st, rb, rc, rt, comm, req);                                  \
}                                                                                                  \
int MPI_Iallgatherv##S(const void *sb, CT sc, MPI_Datatype st, void *rb, const CT rcs[],         \
                       const DT dis[], MPI_Datatype rt, MPI_Comm comm, MPI_Request *req)           \
{                                                                                                  \
    int64_t tot, rs = tsize(rt);                                                                   \
    SUM(rcs, peers(comm), tot);                                                                    \
    note(ID_Iallgatherv##S, sb == MPI_IN_PLACE ? (int64_t)rcs[my_rank(comm)] * rs                 \
                                                : (int64_t)sc * tsize(st), tot * rs);              \
    return PMPI_Iallgatherv##S(sb, sc, st, rb, rcs, dis, rt, comm, req);                           \
}                                                                                                  \
int MPI_Neighbor_allgather##S(const void *sb, CT sc, MPI_Datatype st, void *rb, CT rc,           \
                              MPI_Datatype rt, MPI_Comm comm)                                      \
{                                                                                                  \
    int in, out;                                                                                   \
    degrees(comm, &in, &out);                                                                      \
    note(ID_Neighbor_allgather##S, (int64_t)sc * tsize(st) * out, (int64_t)rc * tsize(rt) * in);  \
    return PMPI_Neighbor_allgather##S(sb, sc, st, rb, rc, rt, comm);                               \
}                                                                                                  \
int MPI_Neighbor_alltoall##S(const void *sb, CT sc, MPI_Datatype st, void *rb, CT rc,            \
                             MPI_Datatype rt, MPI_Comm comm)                                       \
{                                                                                                  \
    int in, out;                                                                                   \
    degrees(comm, &in, &out);                                                                      \
    note(ID_Neighbor_alltoall##S, (int64_t)sc * tsize(st) * out, (int64_t)rc * tsize(rt) * in);   \
    return PMPI_Neighbor_alltoall##S(sb, sc, st, rb, rc, rt, comm);                                \
}                                                                                                  \
int MPI_Neighbor_alltoallv##S(const void *sb, const CT scs[], const DT sds[], MPI_Datatype st,   \
                              void *rb, const CT rcs[], const DT rds[], MPI_Datatype rt,           \
                              MPI_Comm comm)                                                       \
{                                                                                                  \
    int in, out;                                                                                   \
    int64_t s, r;                                                                                  \
    degrees(comm, &in, &out);                                                                      \
    SUM(scs, out, s);                                                                              \
    SUM(rcs, in, r);                                                                               \
    note(ID_Neighbor_alltoallv##S, s * tsize(st), r * tsize(rt));                                  \
    return PMPI_Neighbor_alltoallv##S(sb, scs, sds, st, rb, rcs, rds, rt, comm);                   \
}

/* Functions without counts (the same in both families). */
int MPI_Barrier(MPI_Comm comm)
{
    note(ID_Barrier, 0, 0);
    return PMPI_Barrier(comm);
}

int MPI_Ibarrier(MPI_Comm comm, MPI_Request *req)
{
    note(ID_Ibarrier, 0, 0);
    return PMPI_Ibarrier(comm, req);
}

HPCPAR_WRAPPERS(int, int, )
#if HPCPAR_LARGE_COUNT
HPCPAR_WRAPPERS(MPI_Count, MPI_Aint, _c)
#endif
