//! io_uring behind a small safe API, for the `uring` strategy: one ring, a
//! ring of provided buffers that receives land in, and the few operations
//! the strategy submits (multishot accept, multishot receive, poll, send,
//! cancel). Everything the kernel may read or write while a request is in
//! flight is owned by [`Uring`] for that time, which is what makes the
//! submissions sound:
//!
//! - receive buffers live in one mapping owned by the ring; the kernel picks
//!   a free one when data arrives. Where the kernel consumes buffers
//!   incrementally (`IOU_PBUF_RING_INC`, Linux 6.12), a receive takes only
//!   the bytes it needs from the buffer at the head, and the next receive,
//!   of any connection, goes on after them: a 64 B message uses 64 B of a
//!   buffer, and a 64 KiB one fits one buffer. What a receive filled comes
//!   out as a [`Buf`] (neither `Clone` nor `Copy`), a piece of a buffer:
//!   its bytes are the owner's, below the point the kernel has filled to,
//!   which it never writes again, and the kernel gets the buffer back only
//!   once it is done with it (the completion without `IORING_CQE_F_BUF_MORE`)
//!   and every piece came back through [`Uring::recycle`] (or once a send
//!   from it completed), so no byte is ever written by the kernel while
//!   safe code can see it. Older kernels hand out whole buffers: one piece
//!   each, done at once;
//! - what a send reads ([`Payload`]: a filled buffer, or bytes of the
//!   caller's; several of them for one `sendmsg`, with the message header
//!   and its iovecs in one heap block) moves into the ring for as long as
//!   the send is in flight and comes back with its completion;
//! - the mapping, and the payloads of sends still in flight, are never freed
//!   when the ring is dropped, only leaked: a request that outlives the
//!   ring's fd (the kernel tears a ring down asynchronously) cannot touch
//!   freed memory. A loop drops its ring when its process or thread ends.
//!
//! File descriptors are passed by number: a request on an fd that was
//! closed fails or, if the number was reused, acts on another socket; that
//! is a bug of the caller's bookkeeping, not memory unsafety, and the
//! strategy keeps each socket open until its last request has completed.
//!
//! [`probe`] checks once, at start, that the kernel offers what the strategy
//! needs, and names the cause when it does not.

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use io_uring::types::{BufRingEntry, CancelBuilder, Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};
use slab::Slab;

/// Bytes per provided buffer where the kernel consumes them incrementally
/// (a 64 KiB message fits one), and where it hands out whole buffers.
const BUF_SIZE_INCREMENTAL: usize = 64 * 1024;
const BUF_SIZE_WHOLE: usize = 16 * 1024;
/// Buffers the kernel holds at least (while it has as many): more once
/// receives find none ([`BufRing::starved`]).
const MIN_PUBLISHED: usize = 16;
/// The most payloads one send takes ([`Uring::send_many`]): what a batch of
/// completions brought one connection goes back in one `sendmsg`.
pub(crate) const MAX_BATCH: usize = 16;
/// The group id of the ring's provided buffers.
const GROUP: u16 = 0;

/// The kind of request, in the top bits of its user data.
const KIND_SHIFT: u32 = 60;
const ACCEPT: u64 = 1;
const RECV: u64 = 2;
const POLL: u64 = 3;
const SEND: u64 = 4;
const CANCEL: u64 = 5;
/// Tags are the caller's, below this.
pub(crate) const TAG_LIMIT: u64 = 1 << KIND_SHIFT;

fn user_data(kind: u64, tag: u64) -> u64 {
    debug_assert!(tag < TAG_LIMIT);
    kind << KIND_SHIFT | tag
}

/// The piece of a provided buffer that a receive filled: `len` bytes from
/// `off`. Give it back with [`Uring::recycle`], or send from it.
#[derive(Debug)]
#[must_use = "a buffer not given back is lost to the ring"]
pub(crate) struct Buf {
    id: u16,
    off: u32,
    len: u32,
    /// The mapping of the ring it came from (a buffer of one ring is never
    /// read through another).
    ring: NonNull<u8>,
}

impl Buf {
    /// Bytes received into it.
    pub(crate) fn len(&self) -> usize {
        self.len as usize
    }
}

/// What a send reads: a filled buffer (from `start` to its length), or
/// bytes of the caller's (from `start` on).
#[derive(Debug)]
pub(crate) enum Payload {
    /// A received buffer, transformed in place.
    Buf {
        /// The buffer.
        buf: Buf,
        /// Bytes of it already sent.
        start: usize,
    },
    /// Bytes of the caller's.
    Owned {
        /// The bytes (their heap block does not move with the value).
        data: BytesMut,
        /// Bytes of them already sent.
        start: usize,
    },
}

impl Payload {
    /// Bytes not sent yet.
    pub(crate) fn remaining(&self) -> usize {
        match self {
            Payload::Buf { buf, start } => buf.len() - start,
            Payload::Owned { data, start } => data.len() - start,
        }
    }

    /// Marks `n` more bytes sent.
    pub(crate) fn advance(&mut self, n: usize) {
        match self {
            Payload::Buf { start, .. } | Payload::Owned { start, .. } => *start += n,
        }
        debug_assert!(self.remaining() < usize::MAX / 2);
    }
}

/// The payloads of a finished send, in the order they were given.
#[derive(Debug)]
pub(crate) enum Sent {
    /// One ([`Uring::send`]).
    One(Payload),
    /// Several ([`Uring::send_many`]).
    Many(Vec<Payload>),
}

impl Sent {
    /// Hands each payload to `f`, in order.
    pub(crate) fn each(self, f: impl FnMut(Payload)) {
        match self {
            Sent::One(p) => std::iter::once(p).for_each(f),
            Sent::Many(v) => v.into_iter().for_each(f),
        }
    }
}

/// A `sendmsg` in flight: its header points at its iovecs, which point at
/// its payloads' bytes; all in one heap block that does not move while the
/// kernel reads it.
struct Batch {
    msg: libc::msghdr,
    iov: [libc::iovec; MAX_BATCH],
    payloads: Vec<Payload>,
}

/// What a send in flight holds.
enum InFlight {
    One(Payload),
    Many(Box<Batch>),
}

/// A finished (or, for multishot requests, progressing) request.
#[derive(Debug)]
pub(crate) enum Completion {
    /// The multishot accept took a connection (or failed); `more`: it stays armed.
    Accepted { tag: u64, result: io::Result<TcpStream>, more: bool },
    /// The multishot receive got bytes (`Ok(Some)`), end-of-file (`Ok(None)`),
    /// or failed; `more`: it stays armed.
    Received { tag: u64, result: io::Result<Option<Buf>>, more: bool },
    /// A send finished: how many bytes went, and the payloads back.
    Sent { tag: u64, result: io::Result<usize>, payload: Sent },
    /// A poll fired (or failed, or was cancelled); `more`: it stays armed.
    Polled { tag: u64, result: io::Result<()>, more: bool },
}

/// Why io_uring cannot serve here, for the start-up error.
#[derive(Debug)]
pub(crate) struct Unavailable(pub(crate) String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One io_uring with its provided buffers.
pub(crate) struct Uring {
    ring: IoUring,
    bufs: BufRing,
    /// Payloads of the sends in flight, with their callers' tags.
    sends: Slab<(u64, InFlight)>,
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring").field("buffers", &self.bufs.count).field("sends", &self.sends.len()).finish()
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        // The kernel may still be finishing requests after the ring's fd
        // closes: what it could touch is leaked, never freed (see above).
        std::mem::forget(std::mem::take(&mut self.sends));
    }
}

impl Uring {
    /// A ring of `entries` submission slots (completions: four times that)
    /// and `memory` bytes of provided buffers (64 KiB each where the kernel
    /// consumes them incrementally, else 16 KiB; a power of two of them).
    pub(crate) fn new(entries: u32, memory: usize) -> io::Result<Uring> {
        Uring::build(entries, memory).map_err(|(_, e)| e)
    }

    /// [`Uring::new`], saying which step failed.
    fn build(entries: u32, memory: usize) -> Result<Uring, (Step, io::Error)> {
        let ring = IoUring::builder()
            .setup_cqsize(entries * 4)
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_submit_all()
            .build(entries)
            .map_err(|e| (Step::Setup, e))?;
        let mut bufs = BufRing::map(memory).map_err(|e| (Step::Buffers, e))?;
        // SAFETY: the entries and buffers are one mapping owned by `bufs`,
        // which is never unmapped (BufRing leaks it), so it stays valid for
        // as long as the kernel may use it, past the ring's own life.
        // Incremental consumption where the kernel has it (Linux 6.12);
        // EINVAL from an older one, which is then asked for whole buffers.
        // The entries are published after the registration (the kernel
        // reads up to the tail, 0 until then).
        let register = |map: NonNull<u8>, count: u16, flags: u16| {
            // SAFETY: as above.
            unsafe { ring.submitter().register_buf_ring_with_flags(map.as_ptr() as u64, count, GROUP, flags) }
        };
        let inc = bufs.count_of(BUF_SIZE_INCREMENTAL);
        match register(bufs.map, inc, io_uring::types::IOU_PBUF_RING_INC as u16) {
            Ok(()) => bufs.fill(BUF_SIZE_INCREMENTAL, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                register(bufs.map, bufs.count_of(BUF_SIZE_WHOLE), 0).map_err(|e| (Step::Buffers, e))?;
                bufs.fill(BUF_SIZE_WHOLE, false);
            }
            Err(e) => return Err((Step::Buffers, e)),
        }
        Ok(Uring { ring, bufs, sends: Slab::new() })
    }

    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry built in this file points only at memory
            // this ring owns for the request's whole life (the provided
            // buffers; a send's payloads, and a sendmsg's header and iovecs,
            // moved into `sends` before the push) or at none.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return Ok(());
            }
            // The submission queue is full: hand it to the kernel now.
            self.ring.submit()?;
        }
    }

    /// Arms a multishot accept on `listener`: each connection is a
    /// [`Completion::Accepted`] with `tag`, its socket close-on-exec.
    pub(crate) fn accept_multi(&mut self, listener: RawFd, tag: u64) -> io::Result<()> {
        let e = opcode::AcceptMulti::new(Fd(listener)).flags(libc::SOCK_CLOEXEC).build();
        self.push(e.user_data(user_data(ACCEPT, tag)))
    }

    /// Arms a multishot receive on `fd` into the provided buffers.
    pub(crate) fn recv_multi(&mut self, fd: RawFd, tag: u64) -> io::Result<()> {
        let e = opcode::RecvMulti::new(Fd(fd), GROUP).build();
        self.push(e.user_data(user_data(RECV, tag)))
    }

    /// Polls `fd` for input: once, or (`multi`) every time it becomes readable.
    pub(crate) fn poll_readable(&mut self, fd: RawFd, multi: bool, tag: u64) -> io::Result<()> {
        let e = opcode::PollAdd::new(Fd(fd), libc::POLLIN as u32).multi(multi).build();
        self.push(e.user_data(user_data(POLL, tag)))
    }

    /// Sends `payload` on `fd` (never raising SIGPIPE); it comes back with
    /// the [`Completion::Sent`].
    pub(crate) fn send(&mut self, fd: RawFd, payload: Payload, tag: u64) -> io::Result<()> {
        let (ptr, len) = self.span(&payload);
        let len = len.min(u32::MAX as usize) as u32;
        // The payload's bytes stay where they are (a buffer of the mapping,
        // or a BytesMut's heap block, which moving the value does not move;
        // nothing can reach it to grow or free it while the ring holds it).
        let slot = self.sends.insert((tag, InFlight::One(payload)));
        let e = opcode::Send::new(Fd(fd), ptr, len).flags(libc::MSG_NOSIGNAL).build();
        self.push(e.user_data(user_data(SEND, slot as u64)))
    }

    /// Sends `payloads` (at most [`MAX_BATCH`]) on `fd` with one `sendmsg`,
    /// in order; they come back with the [`Completion::Sent`], which says
    /// how many bytes went in all (a short send stops anywhere in them).
    pub(crate) fn send_many(&mut self, fd: RawFd, payloads: Vec<Payload>, tag: u64) -> io::Result<()> {
        assert!(!payloads.is_empty() && payloads.len() <= MAX_BATCH, "1 to {MAX_BATCH} payloads per send");
        let blank = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
        // SAFETY: msghdr is a plain C struct (pointers, lengths, flags and,
        // on some targets, padding) for which all zeroes is a valid value:
        // no name, no control data, no iovecs yet.
        let msg: libc::msghdr = unsafe { std::mem::zeroed() };
        let mut batch = Box::new(Batch { msg, iov: [blank; MAX_BATCH], payloads });
        for i in 0..batch.payloads.len() {
            let (ptr, len) = self.span(&batch.payloads[i]);
            batch.iov[i] = libc::iovec { iov_base: ptr.cast_mut().cast(), iov_len: len };
        }
        batch.msg.msg_iov = batch.iov.as_mut_ptr();
        batch.msg.msg_iovlen = batch.payloads.len() as _;
        // The header, the iovecs and the payloads' bytes stay where they are
        // while the ring holds the box: moving a Box does not move its block.
        let msg: *const libc::msghdr = &batch.msg;
        let slot = self.sends.insert((tag, InFlight::Many(batch)));
        let e = opcode::SendMsg::new(Fd(fd), msg).flags(libc::MSG_NOSIGNAL as u32).build();
        self.push(e.user_data(user_data(SEND, slot as u64)))
    }

    /// Where a payload's unsent bytes are, and how many.
    fn span(&self, payload: &Payload) -> (*const u8, usize) {
        match payload {
            Payload::Buf { buf, .. } if buf.ring != self.bufs.map => panic!("a buffer of another ring"),
            Payload::Buf { buf, start } => {
                (self.bufs.addr(buf.id).wrapping_add(buf.off as usize + *start), buf.len() - start)
            }
            Payload::Owned { data, start } => (data[*start..].as_ptr(), data.len() - start),
        }
    }

    /// Cancels the accept, receive or poll armed with `tag` (its last
    /// completion says so); a send is cancelled with [`Uring::cancel_fd`].
    pub(crate) fn cancel(&mut self, kind: Kind, tag: u64) -> io::Result<()> {
        let target = user_data(kind.bits(), tag);
        self.push(opcode::AsyncCancel::new(target).build().user_data(user_data(CANCEL, 0)))
    }

    /// Cancels every request on `fd`.
    pub(crate) fn cancel_fd(&mut self, fd: RawFd) -> io::Result<()> {
        let e = opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(fd)).all()).build();
        self.push(e.user_data(user_data(CANCEL, 0)))
    }

    /// One `io_uring_enter`: submits everything queued and waits for at
    /// least one completion, or `timeout`. A signal or the timeout ends the
    /// wait early; that is not an error.
    pub(crate) fn enter(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let submitted = match timeout {
            Some(t) => {
                let ts = Timespec::new().sec(t.as_secs()).nsec(t.subsec_nanos());
                self.ring.submitter().submit_with_args(1, &SubmitArgs::new().timespec(&ts))
            }
            None => self.ring.submitter().submit_and_wait(1),
        };
        match submitted {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Takes every completion that is ready (no syscall).
    pub(crate) fn completions(&mut self, out: &mut Vec<Completion>) {
        let Uring { ring, bufs, sends } = self;
        for cqe in ring.completion() {
            if let Some(c) = decode(&cqe, bufs, sends) {
                out.push(c);
            }
        }
    }

    /// The bytes of a filled buffer.
    pub(crate) fn bytes_mut(&mut self, buf: &Buf) -> &mut [u8] {
        assert_eq!(buf.ring, self.bufs.map, "a buffer of another ring");
        // SAFETY: `buf` is the only token of these bytes (not Clone), held
        // by the caller: the pieces of one buffer do not overlap, and the
        // kernel writes a buffer only past what it has filled so far (or,
        // once the buffer is back, when every piece has been given back
        // through `recycle`); the borrow of `self` keeps a second view of
        // the same bytes from being made through the ring. The `len` bytes
        // from `off` were written by the receive.
        unsafe { std::slice::from_raw_parts_mut(self.bufs.addr(buf.id).add(buf.off as usize) as *mut u8, buf.len()) }
    }

    /// Gives a piece back; its buffer goes back to the kernel for later
    /// receives once the kernel is done with it and every piece is back.
    pub(crate) fn recycle(&mut self, buf: Buf) {
        assert_eq!(buf.ring, self.bufs.map, "a buffer of another ring");
        self.bufs.release(buf.id);
    }

    /// Provided buffers the kernel holds for receives now.
    pub(crate) fn buffers_free(&self) -> usize {
        self.bufs.free
    }

    /// Whether receives take buffers incrementally (`IOU_PBUF_RING_INC`).
    pub(crate) fn incremental(&self) -> bool {
        self.bufs.incremental
    }
}

/// What a completion means.
fn decode(cqe: &cqueue::Entry, bufs: &mut BufRing, sends: &mut Slab<(u64, InFlight)>) -> Option<Completion> {
    let (kind, tag) = (cqe.user_data() >> KIND_SHIFT, cqe.user_data() & (TAG_LIMIT - 1));
    let res = cqe.result();
    let more = cqueue::more(cqe.flags());
    let err = || io::Error::from_raw_os_error(-res);
    Some(match kind {
        ACCEPT => Completion::Accepted {
            tag,
            // SAFETY: a non-negative result of an accept is a new fd that
            // nothing else owns.
            result: if res >= 0 { Ok(TcpStream::from(unsafe { OwnedFd::from_raw_fd(res) })) } else { Err(err()) },
            more,
        },
        RECV => {
            let id = cqueue::buffer_select(cqe.flags());
            let kernel_done = !cqueue::buffer_more(cqe.flags());
            let result = match (res, id) {
                (n, Some(id)) if n > 0 => Ok(Some(bufs.take(id, n as u32, kernel_done))),
                (n, None) if n > 0 => Err(io::Error::other("a receive completed without a buffer")),
                (n, id) => {
                    if let Some(id) = id {
                        bufs.take_nothing(id, kernel_done); // a buffer picked for nothing
                    }
                    if n == -libc::ENOBUFS {
                        bufs.starved();
                    }
                    if n == 0 {
                        Ok(None)
                    } else {
                        Err(err())
                    }
                }
            };
            Completion::Received { tag, result, more }
        }
        POLL => Completion::Polled { tag, result: if res >= 0 { Ok(()) } else { Err(err()) }, more },
        SEND => {
            let (tag, held) = sends.try_remove(tag as usize)?;
            let payload = match held {
                InFlight::One(p) => Sent::One(p),
                InFlight::Many(batch) => Sent::Many(batch.payloads),
            };
            Completion::Sent { tag, result: if res >= 0 { Ok(res as usize) } else { Err(err()) }, payload }
        }
        _ => return None, // a cancel's own completion
    })
}

/// Which step of a ring's set-up failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Setup,
    Buffers,
}

/// The kinds of request [`Uring::cancel`] can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A multishot accept.
    Accept,
    /// A multishot receive.
    Recv,
    /// A poll.
    Poll,
}

impl Kind {
    fn bits(self) -> u64 {
        match self {
            Kind::Accept => ACCEPT,
            Kind::Recv => RECV,
            Kind::Poll => POLL,
        }
    }
}

/// The provided buffer ring: `count` entries (16 bytes each, the kernel's
/// `io_uring_buf`) at the start of one page-aligned anonymous mapping, the
/// buffers after them. The kernel consumes entries from its head; we add
/// buffers at our tail, a few at a time and the last back first
/// ([`BufRing::top_up`]), so the kernel fills buffers that are still in the
/// CPU's caches. The mapping is populated when made: a fixed cost paid at
/// start, which a burst that needs every buffer cannot make grow later.
struct BufRing {
    map: NonNull<u8>,
    /// Where the buffers start in the mapping (after the entries), and
    /// their total size.
    buffers: usize,
    memory: usize,
    /// How many buffers, and of what size.
    count: u16,
    size: usize,
    tail: u16,
    /// Buffers the kernel holds and has not said it is done with.
    free: usize,
    /// Buffers back from the kernel and from their pieces, not given to the
    /// kernel again yet: the last back on top.
    spare: Vec<u16>,
    /// How many buffers the kernel is to hold while there are spare ones:
    /// doubled each time a receive finds none.
    target: usize,
    /// Each buffer's state, by id.
    state: Box<[BufState]>,
    /// The kernel consumes buffers incrementally.
    incremental: bool,
}

/// Where a buffer is between two trips to the kernel.
#[derive(Debug, Default, Clone, Copy)]
struct BufState {
    /// Bytes the kernel has filled from the buffer's start (the next piece
    /// starts here).
    filled: u32,
    /// Pieces handed out and not given back.
    pieces: u32,
    /// The kernel said it is done with the buffer.
    kernel_done: bool,
}

impl BufRing {
    /// A mapping for `memory` bytes of buffers and the entries of as many
    /// buffers as the smaller size makes; no buffer in it yet ([`BufRing::fill`]).
    fn map(memory: usize) -> io::Result<BufRing> {
        let most = memory / BUF_SIZE_WHOLE;
        assert!(most.is_power_of_two() && most <= 1 << 15, "the buffers are a power of two of each size");
        let entries = (most * std::mem::size_of::<BufRingEntry>()).next_multiple_of(4096);
        let len = entries + memory;
        use nix::sys::mman::{mmap_anonymous, MapFlags, ProtFlags};
        // SAFETY: a fresh private anonymous mapping aliases nothing; no
        // address hint, no fd. It is never unmapped (see the module docs).
        let map = unsafe {
            mmap_anonymous(
                None,
                std::num::NonZeroUsize::new(len).expect("non-zero"),
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_POPULATE,
            )
        }
        .map_err(io::Error::from)?;
        Ok(BufRing {
            map: map.cast(),
            buffers: entries,
            memory,
            count: 0,
            size: 0,
            tail: 0,
            free: 0,
            spare: Vec::new(),
            target: 0,
            state: Box::new([]),
            incremental: false,
        })
    }

    /// How many buffers of `size` bytes the mapping holds.
    fn count_of(&self, size: usize) -> u16 {
        (self.memory / size) as u16
    }

    /// Cuts the mapping into buffers of `size` bytes and gives them all to
    /// the kernel (registered with incremental consumption or not).
    fn fill(&mut self, size: usize, incremental: bool) {
        self.count = self.count_of(size);
        self.size = size;
        self.incremental = incremental;
        self.state = vec![BufState::default(); self.count as usize].into_boxed_slice();
        self.target = (self.count as usize).min(MIN_PUBLISHED);
        // The first given are the first filled: on top of the spares.
        self.spare = (0..self.count).rev().collect();
        self.top_up();
    }

    /// Gives spare buffers to the kernel until it holds the target, the
    /// last back first: the buffers the kernel fills next are the ones most
    /// recently read and written, still in the CPU's caches, where a ring
    /// that handed every buffer out in turn would cycle through all of them
    /// (16 MiB) between two uses of one.
    fn top_up(&mut self) {
        while self.free < self.target {
            let Some(id) = self.spare.pop() else { return };
            self.give(id);
        }
    }

    /// A receive found no buffer: the kernel is to hold twice as many.
    fn starved(&mut self) {
        self.target = (self.target * 2).min(self.count as usize);
        self.top_up();
    }

    /// Where buffer `id` starts.
    fn addr(&self, id: u16) -> *const u8 {
        assert!(id < self.count, "buffer id {id} out of range");
        // SAFETY: within the mapping: `buffers + count * size` is its length.
        unsafe { self.map.as_ptr().add(self.buffers + id as usize * self.size) }
    }

    /// The piece of buffer `id` that a receive filled with `len` more bytes;
    /// `kernel_done`: the kernel will not fill this buffer further.
    fn take(&mut self, id: u16, len: u32, kernel_done: bool) -> Buf {
        let s = &mut self.state[id as usize];
        assert!(!s.kernel_done, "buffer {id} filled after the kernel was done with it");
        let off = s.filled;
        assert!(off as usize + len as usize <= self.size, "buffer {id} overfilled: {off} + {len}");
        s.filled += len;
        s.pieces += 1;
        if kernel_done {
            s.kernel_done = true;
            self.free -= 1;
            self.top_up();
        }
        Buf { id, off, len, ring: self.map }
    }

    /// A completion that named buffer `id` but brought no bytes.
    fn take_nothing(&mut self, id: u16, kernel_done: bool) {
        let s = &mut self.state[id as usize];
        if kernel_done && !s.kernel_done {
            s.kernel_done = true;
            self.free -= 1;
            self.give_back_if_unused(id);
            self.top_up();
        }
    }

    /// A piece of buffer `id` came back.
    fn release(&mut self, id: u16) {
        let s = &mut self.state[id as usize];
        s.pieces = s.pieces.checked_sub(1).expect("a piece given back twice");
        self.give_back_if_unused(id);
        self.top_up();
    }

    /// Makes buffer `id` spare once the kernel is done with it and no piece
    /// of it is out (its callers then [`BufRing::top_up`]).
    fn give_back_if_unused(&mut self, id: u16) {
        let s = self.state[id as usize];
        if s.kernel_done && s.pieces == 0 {
            self.state[id as usize] = BufState::default();
            self.spare.push(id);
        }
    }

    /// Puts buffer `id` at the tail, for the kernel to fill.
    fn give(&mut self, id: u16) {
        let base = self.map.as_ptr().cast::<BufRingEntry>();
        let slot = (self.tail & (self.count - 1)) as usize;
        // SAFETY: `slot < count`, so the entry is inside the mapping's entry
        // area; the kernel reads only entries between its head and our tail,
        // and this one is past the tail until the store below publishes it.
        unsafe {
            let e = &mut *base.add(slot);
            e.set_addr(self.addr(id) as u64);
            e.set_len(self.size as u32);
            e.set_bid(id);
        }
        self.tail = self.tail.wrapping_add(1);
        self.free += 1;
        // SAFETY: the tail is the `resv` field of entry 0, a properly aligned
        // u16 inside the mapping, which the kernel reads concurrently: an
        // atomic release store publishes the entry written above first.
        unsafe {
            let tail = BufRingEntry::tail(base).cast_mut();
            (*tail.cast::<AtomicU16>()).store(self.tail, Ordering::Release);
        }
    }
}

/// Checks, once at start, that io_uring serves here as the strategy needs:
/// a ring with the flags it sets up, provided buffer rings (Linux 5.19) and
/// multishot receive (Linux 6.0), tried on a socket pair. The error names
/// the cause: seccomp or `kernel.io_uring_disabled` (EPERM), no io_uring
/// (ENOSYS), locked-memory limits (ENOMEM), an older kernel (EINVAL).
pub(crate) fn probe() -> Result<(), Unavailable> {
    let mut ring = Uring::build(8, 2 * BUF_SIZE_INCREMENTAL).map_err(|(step, e)| Unavailable(setup_cause(step, &e)))?;
    let (a, b) = std::os::unix::net::UnixStream::pair().map_err(|e| Unavailable(format!("socketpair: {e}")))?;
    let fail = |what: &str, e: io::Error| Unavailable(format!("{what}: {e}"));
    ring.recv_multi(a.as_raw_fd(), 0).map_err(|e| fail("multishot receive", e))?;
    use std::io::Write;
    (&b).write_all(b"x").map_err(|e| fail("socketpair", e))?;
    let mut got = Vec::new();
    for _ in 0..4 {
        ring.enter(Some(Duration::from_secs(1))).map_err(|e| fail("io_uring_enter", e))?;
        ring.completions(&mut got);
        if !got.is_empty() {
            break;
        }
    }
    match got.pop() {
        Some(Completion::Received { result: Ok(Some(buf)), more: true, .. }) => {
            ring.recycle(buf);
            Ok(())
        }
        Some(Completion::Received { result: Err(e), .. }) if e.raw_os_error() == Some(libc::EINVAL) => {
            Err(Unavailable("this kernel has no multishot receive (Linux 6.0 or later has)".into()))
        }
        Some(Completion::Received { result: Err(e), .. }) => Err(fail("multishot receive", e)),
        other => Err(Unavailable(format!("multishot receive did not stay armed ({other:?})"))),
    }
}

/// The cause of a failed ring set-up, in words.
fn setup_cause(step: Step, e: &io::Error) -> String {
    if step == Step::Buffers {
        return match e.raw_os_error() {
            Some(libc::EINVAL) => "this kernel has no provided buffer rings (Linux 5.19 or later has)".into(),
            _ => format!("registering the provided buffer ring: {e}"),
        };
    }
    match e.raw_os_error() {
        Some(libc::EPERM) => match std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").ok().as_deref().map(str::trim) {
            Some("2") => "io_uring is disabled on this machine (sysctl kernel.io_uring_disabled = 2)".into(),
            Some("1") => "io_uring is limited to the group kernel.io_uring_group (sysctl kernel.io_uring_disabled = 1)".into(),
            _ => "io_uring_setup is not permitted (EPERM: a seccomp filter, as container runtimes install by default)"
                .into(),
        },
        Some(libc::ENOSYS) => "this kernel has no io_uring (ENOSYS: built without it, or a seccomp filter hides it)".into(),
        Some(libc::ENOMEM) => {
            "not enough memory for the ring (ENOMEM: kernels before 5.12 count rings against RLIMIT_MEMLOCK, `ulimit -l`)"
                .into()
        }
        Some(libc::EINVAL) => {
            "this kernel lacks the ring set-up the strategy needs (EINVAL: single issuer and deferred task running need Linux 6.1)"
                .into()
        }
        _ => format!("io_uring set-up failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The pieces of one buffer: handed out at consecutive offsets, and the
    /// buffer given back to the kernel only once the kernel is done with it
    /// and every piece is back (no kernel needed: the ring's bookkeeping).
    #[test]
    fn a_buffer_goes_back_once_the_kernel_is_done_and_every_piece_is_back() {
        let mut bufs = BufRing::map(4 * BUF_SIZE_INCREMENTAL).unwrap();
        bufs.fill(BUF_SIZE_INCREMENTAL, true);
        assert_eq!((bufs.count, bufs.free, bufs.tail), (4, 4, 4));
        let a = bufs.take(0, 100, false);
        let b = bufs.take(0, 200, false);
        assert_eq!((a.off, a.len, b.off, b.len), (0, 100, 100, 200));
        assert_eq!(bufs.free, 4, "the kernel still fills buffer 0");
        let c = bufs.take(0, 50, true);
        assert_eq!((c.off, bufs.free), (300, 3));
        bufs.release(a.id);
        bufs.release(c.id);
        assert_eq!(bufs.tail, 4, "given back while a piece is out");
        bufs.release(b.id);
        assert_eq!((bufs.tail, bufs.free), (5, 4), "given back once the last piece is");
        // Back from the start: the next piece of buffer 0 starts at 0.
        assert_eq!(bufs.take(0, 10, true).off, 0);
        // A completion that names a buffer and brings nothing: given back
        // at once if the kernel is done with it and nothing of it is out.
        bufs.take_nothing(1, true);
        assert_eq!((bufs.tail, bufs.free), (6, 3));
    }

    /// Whole buffers, as a kernel without incremental consumption hands them
    /// out: each completion is one piece of its own buffer, done at once, and
    /// the buffer goes back with its piece.
    #[test]
    fn whole_buffers_go_back_with_their_one_piece() {
        let mut bufs = BufRing::map(64 * BUF_SIZE_WHOLE).unwrap();
        bufs.fill(BUF_SIZE_WHOLE, false);
        assert_eq!((bufs.count, bufs.size, bufs.free, bufs.spare.len()), (64, BUF_SIZE_WHOLE, 16, 48));
        let a = bufs.take(0, BUF_SIZE_WHOLE as u32, true);
        let b = bufs.take(1, 10, true);
        assert_eq!((a.off, b.off, bufs.free), (0, 0, 16), "each replaced from the spares at once");
        assert_eq!(last_published(&bufs), 17);
        bufs.release(b.id);
        assert_eq!((bufs.free, last_published(&bufs)), (16, 17), "the kernel holds its target: buffer 1 is spare");
        bufs.release(a.id);
        let _c = bufs.take(2, 1, true);
        assert_eq!(last_published(&bufs), 0, "the one back last goes first");
    }

    /// The buffer of the ring's last published entry.
    fn last_published(bufs: &BufRing) -> u16 {
        let slot = (bufs.tail.wrapping_sub(1) & (bufs.count - 1)) as usize;
        // SAFETY: `slot < count`: an entry inside the mapping, written by `give`.
        unsafe { (*bufs.map.as_ptr().cast::<BufRingEntry>().add(slot)).bid() }
    }

    /// The kernel holds 16 buffers while there are more; the one back last
    /// is the next it gets (still in cache); a receive that found none
    /// doubles what it holds.
    #[test]
    fn the_kernel_gets_the_buffer_back_last_first_and_more_once_starved() {
        let mut bufs = BufRing::map(64 * BUF_SIZE_INCREMENTAL).unwrap();
        bufs.fill(BUF_SIZE_INCREMENTAL, true);
        assert_eq!((bufs.free, bufs.spare.len(), last_published(&bufs)), (16, 48, 15));
        let a = bufs.take(0, 10, true);
        assert_eq!((bufs.free, last_published(&bufs)), (16, 16), "buffer 16 replaces buffer 0");
        bufs.release(a.id);
        assert_eq!(bufs.free, 16, "buffer 0 is spare: the kernel holds its target");
        let _b = bufs.take(1, 10, true);
        assert_eq!(last_published(&bufs), 0, "the buffer back last is given first");
        bufs.starved();
        assert_eq!((bufs.target, bufs.free), (32, 32));
        for _ in 0..3 {
            bufs.starved();
        }
        assert_eq!((bufs.target, bufs.free, bufs.spare.len()), (64, 63, 0), "all but the piece still out");
    }

    /// Two receives on one connection, with the kernel's incremental
    /// consumption: the second lands in the same buffer, after the first.
    /// (A kernel without it hands out two whole buffers instead.)
    #[test]
    fn small_receives_share_a_buffer_where_the_kernel_consumes_incrementally() {
        let Ok(mut ring) = Uring::new(8, 2 * BUF_SIZE_INCREMENTAL) else {
            eprintln!("no io_uring here: skipped");
            return;
        };
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        ring.recv_multi(a.as_raw_fd(), 7).unwrap();
        let mut pieces = Vec::new();
        for msg in [&b"first"[..], b"and second"] {
            b.write_all(msg).unwrap();
            let mut got = Vec::new();
            for _ in 0..10 {
                ring.enter(Some(Duration::from_secs(1))).unwrap();
                ring.completions(&mut got);
                if !got.is_empty() {
                    break;
                }
            }
            match got.pop() {
                Some(Completion::Received { tag: 7, result: Ok(Some(buf)), more: true }) => {
                    assert_eq!(ring.bytes_mut(&buf), msg);
                    pieces.push(buf);
                }
                other => panic!("expected a receive of {msg:?}: {other:?}"),
            }
        }
        println!("incremental consumption: {}", ring.incremental());
        if ring.incremental() {
            assert_eq!((pieces[0].id, pieces[0].off), (pieces[1].id, 0));
            assert_eq!(pieces[1].off, 5);
            assert_eq!(ring.buffers_free(), 2, "the kernel still holds the partly filled buffer");
        } else {
            assert_ne!(pieces[0].id, pieces[1].id);
        }
        for p in pieces {
            ring.recycle(p);
        }
    }
}
