#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A model thread: a real OS thread running a closure (CPU threads, device threads, kernel
/// threads of the model). `join()` waits for it. The explorer takes these over in its mode.
public final class ModelThread: @unchecked Sendable {
    private var thread: pthread_t? = nil
    private let body: () -> Void
    public let name: String
    private let finished: Completion

    /// Hook the explorer installs to wrap thread bodies (register/unregister with its scheduler).
    /// Called on the spawning thread; the body it wraps ends by completing the thread's join.
    nonisolated(unsafe) public static var wrapBody: ((String, @escaping () -> Void) -> () -> Void)? = nil

    private init(name: String, body: @escaping () -> Void) {
        self.name = name
        // The completion is part of the body, so that under the explorer a joiner is woken
        // while the thread is still scheduled (the wrapper then releases the body's captures
        // before the thread leaves the scheduler).
        let done = Completion()
        finished = done
        let full = { body(); done.complete() }
        if let wrap = ModelThread.wrapBody { self.body = wrap(name, full) } else { self.body = full }
    }

    /// Starts a thread running `body`.
    public static func spawn(name: String = "model", _ body: @escaping () -> Void) -> ModelThread {
        let t = ModelThread(name: name, body: body)
        let box = Unmanaged.passRetained(t).toOpaque()
        var attr = pthread_attr_t()
        pthread_attr_init(&attr)
        pthread_attr_setstacksize(&attr, 8 << 20)
        var tid = pthread_t()
        let rc = pthread_create(&tid, &attr, { raw in
            let me = Unmanaged<ModelThread>.fromOpaque(raw!).takeRetainedValue()
            me.body()
            return nil
        }, box)
        pthread_attr_destroy(&attr)
        precondition(rc == 0, "pthread_create failed: \(rc)")
        t.thread = tid
        // After the OS thread exists: the explorer may run the new thread from here on.
        Sync.point(.threadStart)
        return t
    }

    /// Waits for the thread to finish.
    public func join() {
        finished.wait()
        guard let t = thread else { return }
        thread = nil
        // Under the explorer the thread still has its exit step to take when its join
        // completes, and takes it when scheduled: its OS thread ends on its own.
        if Sync.scheduler?.controlsCurrentThread == true { pthread_detach(t) } else { pthread_join(t, nil) }
    }

    /// Lets the thread finish on its own: its resources go when it exits, and nobody may
    /// `join` it afterwards.
    public func detach() {
        if let t = thread { pthread_detach(t); thread = nil }
    }
}
