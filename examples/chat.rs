//! A chat room: every line a client sends goes to every other client, as
//! `guest3: the line`; joins and leaves are announced (`* guest3 joined`).
//! Written as an `async fn` handler that waits for two things at once:
//! its client's next bytes and the room's next lines for it.
//!
//! ```sh
//! cargo run --release --example chat -- --mode event --listen 127.0.0.1:7000
//! nc 127.0.0.1 7000       # in two or more terminals; type lines
//! ```
//!
//! What it shows: **messages between connections** on an event loop. Each
//! member has an inbox (lines waiting for it, the waker of its task);
//! saying a line pushes it into every other inbox and wakes their tasks,
//! which the loop then polls: no thread, no socket, no copy per reader (a
//! line is shared by reference count).
//!
//! **Flow control, so that no member hurts another.** A member's backlog is
//! what waits for it or is being written to it. While some member's
//! backlog is over [`HIGH_WATER`], the others stop reading their own
//! clients (they still receive): a client that floods the room is slowed to
//! the pace of its readers by TCP itself, and no fast reader is dropped for
//! a burst it could not have kept up with. A member still over the mark
//! after [`STALL`] (a client that stopped reading) is disconnected as too
//! slow, and the room moves on: a stuck client costs the others at most
//! that pause, and the room at most [`MAX_BACKLOG`] bytes for it.
//!
//! **Which strategies can run it**, and why (the program refuses the
//! others at start with the reason, exit 2):
//!
//! - `event`: every connection is a task of one loop on one thread;
//! - `reactor`: one loop per thread, each with its own connections. The
//!   handler factory is shared by every loop, so the room is thread-safe
//!   (mutexes around the members and each inbox; wakers are `Send`): a line
//!   said on one loop wakes the tasks on the others through their loop's
//!   waker;
//! - `fork` and `prefork`: each connection (fork) or worker (prefork) is a
//!   process with its own memory, so members in different processes could
//!   not hear each other without IPC (shared memory, pipes, a broker):
//!   refused rather than silently split into many rooms;
//! - `thread`, `pool`, `serial`: a handler there runs under `block_on` on
//!   its connection's thread, and `Connection`'s reads block that thread
//!   in the socket read (returning early only for the handler's own
//!   timers), so a member waiting for its client cannot be woken by the
//!   room. Tried: with thread mode let through, a member never received a
//!   line, not even after its own client sent one (the read is polled
//!   first, and blocks the thread each time round). Refused. (A handler could poll the room on a timer, with
//!   `handler::timeout` around each read: a busy wait, not this example.)
//!
//! **Limits**: a line may be [`MAX_LINE`] bytes (longer: a notice, then the
//! connection is closed).

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::io;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::future::or;
use futures_lite::AsyncWriteExt;
use switchyard_server::handler::{timeout, Chunk};
use switchyard_server::{handler, Config, Connection, Mode};

/// Bytes a line may take (without its newline).
pub const MAX_LINE: usize = 4096;
/// A member's backlog above which the others stop reading their clients.
pub const HIGH_WATER: usize = 256 * 1024;
/// How long a member may stay above [`HIGH_WATER`] before it is dropped.
pub const STALL: Duration = Duration::from_secs(2);
/// A backlog that drops its member at once (what one read of each speaker
/// can add past [`HIGH_WATER`] stays well under it).
pub const MAX_BACKLOG: usize = 4 * 1024 * 1024;

/// The members of the room, by id.
#[derive(Default)]
struct Room {
    members: Mutex<HashMap<u64, Arc<Inbox>>>,
    next_id: AtomicU64,
}

/// What waits for one member.
#[derive(Default)]
struct Inbox {
    state: Mutex<InboxState>,
}

#[derive(Default)]
struct InboxState {
    lines: VecDeque<Arc<[u8]>>,
    /// The backlog: bytes of `lines` and of what is being written.
    bytes: usize,
    /// Too slow: no more lines; the member is disconnected.
    dropped: bool,
    /// The member's task.
    waker: Option<Waker>,
    /// Members waiting for this backlog to go down.
    waiting: Vec<Waker>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl InboxState {
    fn wake_all(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
        self.waiting.drain(..).for_each(Waker::wake);
    }

    fn drop_member(&mut self) {
        self.dropped = true;
        self.lines.clear();
        self.bytes = 0;
        self.wake_all();
    }
}

impl Inbox {
    /// Queues a line and wakes the member's task.
    fn push(&self, line: &Arc<[u8]>) {
        let mut s = lock(&self.state);
        if s.dropped {
            return;
        }
        if s.bytes + line.len() > MAX_BACKLOG {
            return s.drop_member();
        }
        s.bytes += line.len();
        s.lines.push_back(line.clone());
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }

    /// Waits for lines and takes them all (they stay in the backlog until
    /// [`Inbox::written`]); `None` once the member was dropped.
    async fn next(&self) -> Option<Vec<Arc<[u8]>>> {
        poll_fn(|cx| {
            let mut s = lock(&self.state);
            if s.dropped {
                return Poll::Ready(None);
            }
            if s.lines.is_empty() {
                s.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            Poll::Ready(Some(s.lines.drain(..).collect()))
        })
        .await
    }

    /// `n` bytes taken by [`Inbox::next`] reached the socket.
    fn written(&self, n: usize) {
        let mut s = lock(&self.state);
        s.bytes = s.bytes.saturating_sub(n);
        if s.bytes <= HIGH_WATER {
            s.waiting.drain(..).for_each(Waker::wake);
        }
    }

    /// Waits until the member is dropped.
    async fn dropped(&self) {
        poll_fn(|cx| {
            let mut s = lock(&self.state);
            if s.dropped {
                return Poll::Ready(());
            }
            s.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

impl Room {
    /// A new member: its id and inbox, and how many others are here.
    fn join(&self) -> (u64, Arc<Inbox>, usize) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let inbox = Arc::new(Inbox::default());
        let mut members = lock(&self.members);
        let others = members.len();
        members.insert(id, inbox.clone());
        (id, inbox, others)
    }

    /// Sends `line` to every member but `from`.
    fn say(&self, from: u64, line: Vec<u8>) {
        let line: Arc<[u8]> = line.into();
        for (id, inbox) in lock(&self.members).iter() {
            if *id != from {
                inbox.push(&line);
            }
        }
    }

    fn leave(&self, id: u64) {
        lock(&self.members).remove(&id);
    }

    /// Whether another member's backlog is over [`HIGH_WATER`]; with a
    /// waker, it is woken when that changes.
    fn congested(&self, me: u64, waker: Option<&Waker>) -> bool {
        let mut any = false;
        for (id, inbox) in lock(&self.members).iter() {
            let mut s = lock(&inbox.state);
            if *id != me && !s.dropped && s.bytes > HIGH_WATER {
                any = true;
                if let Some(w) = waker {
                    s.waiting.push(w.clone());
                }
            }
        }
        any
    }

    /// Waits until no other member is over [`HIGH_WATER`].
    async fn clear(&self, me: u64) {
        poll_fn(|cx| if self.congested(me, Some(cx.waker())) { Poll::Pending } else { Poll::Ready(()) }).await
    }

    /// Drops every other member still over [`HIGH_WATER`].
    fn drop_stalled(&self, me: u64) {
        for (id, inbox) in lock(&self.members).iter() {
            let mut s = lock(&inbox.state);
            if *id != me && !s.dropped && s.bytes > HIGH_WATER {
                s.drop_member();
            }
        }
    }
}

/// Takes a member out of the room and announces it, however its handler
/// ends (its client left, an error, a panic).
struct Membership<'a> {
    room: &'a Room,
    id: u64,
}

impl Drop for Membership<'_> {
    fn drop(&mut self) {
        self.room.leave(self.id);
        self.room.say(self.id, format!("* guest{} left\n", self.id).into_bytes());
    }
}

/// What the member's task woke up for.
enum Woke {
    Input(io::Result<Option<Chunk>>),
    Lines(Option<Vec<Arc<[u8]>>>),
    /// The room is clear again (`true`), or stayed congested for [`STALL`].
    Clear(bool),
}

/// One member: reads its lines and says them, writes the others' lines.
async fn member(mut conn: Connection, room: Arc<Room>) -> io::Result<()> {
    let (id, inbox, others) = room.join();
    let _membership = Membership { room: &room, id };
    room.say(id, format!("* guest{id} joined\n").into_bytes());
    conn.write_all(format!("* welcome, you are guest{id}; {others} others here\n").as_bytes()).await?;
    let mut partial = Vec::new();
    let mut congested_since = None;
    loop {
        // Whichever comes first; the other wait is dropped, which loses
        // nothing (neither has taken anything yet).
        let lines = async { Woke::Lines(inbox.next().await) };
        let woke = if room.congested(id, None) {
            // Someone is behind: receive, but do not read the client.
            let since = *congested_since.get_or_insert_with(Instant::now);
            let left = STALL.saturating_sub(since.elapsed());
            or(async { Woke::Clear(timeout(left, room.clear(id)).await.is_ok()) }, lines).await
        } else {
            congested_since = None;
            or(async { Woke::Input(conn.read_chunk().await) }, lines).await
        };
        match woke {
            Woke::Clear(true) => congested_since = None,
            Woke::Clear(false) => room.drop_stalled(id),
            Woke::Input(read) => {
                let Some(chunk) = read? else { return Ok(()) };
                partial.extend_from_slice(&chunk);
                let mut start = 0;
                while let Some(nl) = partial[start..].iter().position(|&b| b == b'\n') {
                    let line = &partial[start..start + nl];
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    if line.len() > MAX_LINE {
                        break;
                    }
                    let mut said = format!("guest{id}: ").into_bytes();
                    said.extend_from_slice(line);
                    said.push(b'\n');
                    room.say(id, said);
                    start += nl + 1;
                }
                partial.drain(..start);
                if partial.len() > MAX_LINE + 1 {
                    let notice = format!("* line over {MAX_LINE} bytes: disconnected\n");
                    return conn.write_all(notice.as_bytes()).await;
                }
            }
            Woke::Lines(Some(lines)) => {
                // Writing waits for a slow client; meanwhile its backlog
                // grows, and a member dropped mid-write is done.
                let write = async {
                    for line in &lines {
                        conn.write_all(line).await?;
                    }
                    io::Result::Ok(true)
                };
                let dropped = async {
                    inbox.dropped().await;
                    Ok(false)
                };
                if !or(write, dropped).await? {
                    return Ok(()); // its client is not reading: nothing more can reach it
                }
                inbox.written(lines.iter().map(|l| l.len()).sum());
            }
            Woke::Lines(None) => {
                let notice = format!("* too slow: over {HIGH_WATER} bytes unread for {STALL:?}, disconnected\n");
                return conn.write_all(notice.as_bytes()).await;
            }
        }
    }
}

/// The modes that can run the room (module docs: why the others cannot).
fn check_mode(config: &Config) -> Result<(), String> {
    match config.mode {
        Mode::Event | Mode::Reactor => Ok(()),
        Mode::Fork | Mode::Prefork => Err(format!(
            "chat cannot run in {} mode: its processes do not share memory, so members in different processes \
             could not hear each other (use --mode event or reactor)",
            config.mode
        )),
        Mode::Uring => Err("chat cannot run in uring mode: a handler waits on readiness, which an io_uring loop \
                            does not have (use --mode event or reactor)"
            .to_string()),
        mode => Err(format!(
            "chat cannot run in {mode} mode: a handler there blocks its thread in the socket read, so it could not \
             hear the room while it waits for its client (use --mode event or reactor)"
        )),
    }
}

fn main() -> ExitCode {
    switchyard::server_cli::main_with(|config| {
        check_mode(config)?;
        let room = Arc::new(Room::default());
        Ok(handler(move |conn| member(conn, room.clone())))
    })
}
