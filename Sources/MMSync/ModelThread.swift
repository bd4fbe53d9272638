#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A model thread: a real OS thread running a closure (CPU threads, device threads, kernel
/// threads of the model), or under the explorer one of its execution contexts. `join()` waits
/// for it.
public final class ModelThread: @unchecked Sendable {
    private var thread: pthread_t? = nil
    /// What the thread runs, until it is handed over (the explorer releases it, and with it
    /// the captures, while the thread is still scheduled).
    private var body: (() -> Void)?
    public let name: String
    private let finished: Completion

    /// Hook the explorer installs: it runs the thread's body (which ends by completing the
    /// thread's join) as one of its execution contexts instead of an OS thread. Called on the
    /// spawning thread, inside its step.
    nonisolated(unsafe) public static var startInExplorer: ((String, @escaping () -> Void) -> Void)? = nil

    private init(name: String, body: @escaping () -> Void) {
        self.name = name
        // The completion is part of the body, so that under the explorer a joiner is woken
        // while the thread is still scheduled (the explorer then releases the body's captures
        // before the thread leaves the schedule).
        let done = Completion()
        finished = done
        self.body = { body(); done.complete() }
    }

    /// Starts a thread running `body`.
    public static func spawn(name: String = "model", _ body: @escaping () -> Void) -> ModelThread {
        let t = ModelThread(name: name, body: body)
        if let start = ModelThread.startInExplorer {
            let body = t.body!
            t.body = nil
            start(name, body)
        } else {
            let box = Unmanaged.passRetained(t).toOpaque()
            var attr = pthread_attr_t()
            pthread_attr_init(&attr)
            pthread_attr_setstacksize(&attr, 8 << 20)
            var tid = pthread_t()
            let rc = pthread_create(&tid, &attr, { raw in
                let me = Unmanaged<ModelThread>.fromOpaque(raw!).takeRetainedValue()
                me.body?()
                return nil
            }, box)
            pthread_attr_destroy(&attr)
            precondition(rc == 0, "pthread_create failed: \(rc)")
            t.thread = tid
        }
        // The thread exists: the explorer may run it from here on.
        Sync.point(.threadStart)
        return t
    }

    /// Waits for the thread to finish.
    public func join() {
        finished.wait()
        // Under the explorer there is no OS thread: the context ends when it is scheduled.
        guard let t = thread else { return }
        thread = nil
        pthread_join(t, nil)
    }

    /// Lets the thread finish on its own: its resources go when it exits, and nobody may
    /// `join` it afterwards.
    public func detach() {
        if let t = thread { pthread_detach(t); thread = nil }
    }
}
