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
    private let finished = Completion()

    /// Hook the explorer installs to wrap thread bodies (register/unregister with its scheduler).
    nonisolated(unsafe) public static var wrapBody: ((String, @escaping () -> Void) -> () -> Void)? = nil

    private init(name: String, body: @escaping () -> Void) {
        self.name = name
        if let wrap = ModelThread.wrapBody { self.body = wrap(name, body) } else { self.body = body }
    }

    /// Starts a thread running `body`.
    public static func spawn(name: String = "model", _ body: @escaping () -> Void) -> ModelThread {
        let t = ModelThread(name: name, body: body)
        Sync.point(.threadStart)
        let box = Unmanaged.passRetained(t).toOpaque()
        var attr = pthread_attr_t()
        pthread_attr_init(&attr)
        pthread_attr_setstacksize(&attr, 8 << 20)
        var tid = pthread_t()
        let rc = pthread_create(&tid, &attr, { raw in
            let me = Unmanaged<ModelThread>.fromOpaque(raw!).takeRetainedValue()
            me.body()
            me.finished.complete()
            return nil
        }, box)
        pthread_attr_destroy(&attr)
        precondition(rc == 0, "pthread_create failed: \(rc)")
        t.thread = tid
        return t
    }

    /// Waits for the thread to finish.
    public func join() {
        finished.wait()
        if let t = thread { pthread_join(t, nil); thread = nil }
    }

    /// Lets the thread finish on its own: its resources go when it exits, and nobody may
    /// `join` it afterwards.
    public func detach() {
        if let t = thread { pthread_detach(t); thread = nil }
    }
}
