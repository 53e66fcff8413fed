// genserve's compiled gRPC transport: gRPC C++ (the callback API's generic service) owns the port,
// the HTTP/2 connections and every call's reads and writes; Python keeps every handler.
//
// Nothing here runs Python on gRPC's threads. A call's arrival, its messages, its cancellation and
// its end become events in one queue, and an eventfd tells the event loop there is something to
// take (it is written only when the queue goes from empty to not empty, so a burst of calls costs
// one wake-up). The event loop takes them all at once (take_events), runs the handlers, and answers
// through write/finish, which only start gRPC operations and return.
//
// A call's bytes are not parsed here: each method's (de)serializers stay in Python, with the
// handlers the generated add_*_to_server functions registered (native.py).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <thread>
#include <tuple>
#include <utility>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace py = pybind11;

namespace {

// Event kinds, mirrored in native.py.
enum Kind : int { ARRIVED = 0, MESSAGE = 1, HALF_CLOSED = 2, CANCELLED = 3, DONE = 4 };

using Metadata = std::vector<std::pair<std::string, std::string>>;

struct Event {
  Kind kind;
  uint64_t call;
  std::string method;                 // ARRIVED
  double timeout = -1;                // ARRIVED: seconds left until the call's deadline; < 0 = none
  std::optional<std::string> payload; // ARRIVED (the first message, if read) and MESSAGE
  Metadata metadata = {};             // ARRIVED: the client's metadata (keys lower-case; "-bin" values decoded)
  std::string peer = {};              // ARRIVED: "ipv4:127.0.0.1:5555", as grpcio says it
};

std::string flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  out.reserve(buffer.Length());
  for (const auto& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

grpc::ByteBuffer to_buffer(const std::string& bytes) {
  grpc::Slice slice(bytes.data(), bytes.size());
  return grpc::ByteBuffer(&slice, 1);
}

class Hub {
 public:
  Hub() : fd_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
    if (fd_ < 0) throw std::runtime_error(std::string("eventfd: ") + std::strerror(errno));
  }
  ~Hub() { close(fd_); }
  int fd() const { return fd_; }

  void push(Event&& e) {
    bool wake;
    {
      std::lock_guard<std::mutex> lock(mu_);
      wake = events_.empty();
      events_.push_back(std::move(e));
    }
    if (wake) {
      uint64_t one = 1;
      ssize_t n = write(fd_, &one, sizeof one);
      (void)n;  // the counter cannot overflow in practice; a failed write only delays nothing new
    }
  }

  std::vector<Event> take() {
    uint64_t count;
    ssize_t n = read(fd_, &count, sizeof count);  // reset before taking: a push after it wakes again
    (void)n;
    std::vector<Event> out;
    std::lock_guard<std::mutex> lock(mu_);
    out.swap(events_);
    return out;
  }

 private:
  int fd_;
  std::mutex mu_;
  std::vector<Event> events_;
};

// The thread that starts the event loop's writes and finishes. Starting one is where gRPC does the
// HTTP/2 framing and the send system calls, inline (about 80 us per small unary answer here): on
// the event loop's thread that was a quarter of the GIL-holding time under load, serialised with
// everything else the loop does. Queued here, the loop goes on at once and the sends run on
// another core, in the order the loop asked for them.
class Sender {
 public:
  Sender() : thread_([this] { run(); }) {}
  ~Sender() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }

  void post(std::function<void()> op) {
    std::vector<std::function<void()>> one;
    one.push_back(std::move(op));
    post_all(one);
  }

  void post_all(std::vector<std::function<void()>>& ops) {
    if (ops.empty()) return;
    bool wake;
    {
      std::lock_guard<std::mutex> lock(mu_);
      wake = ops_.empty();
      for (auto& op : ops) ops_.push_back(std::move(op));
    }
    if (wake) cv_.notify_one();
  }

 private:
  void run() {
    pthread_setname_np(pthread_self(), "genserve-send");
    std::vector<std::function<void()>> batch;
    while (true) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stop_ || !ops_.empty(); });
        if (ops_.empty()) return;  // stopping, and nothing left to send
        batch.assign(std::make_move_iterator(ops_.begin()), std::make_move_iterator(ops_.end()));
        ops_.clear();
      }
      for (auto& op : batch) op();
      batch.clear();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> ops_;
  bool stop_ = false;
  std::thread thread_;  // last: started once the rest is ready
};

class Server;

// One call. gRPC calls its On* methods on its own threads; Python calls read/write/finish on the
// event loop's thread. mu_ guards the write queue and the finish; gRPC operations are started
// outside it (a reaction may run inline).
class Call final : public grpc::ServerGenericBidiReactor {
 public:
  Call(Server* server, Hub* hub, grpc::GenericCallbackServerContext* ctx, uint64_t id, bool read_first)
      : server_(server), hub_(hub), ctx_(ctx), id_(id), read_first_(read_first) {}

  void begin() {
    if (read_first_) {
      StartRead(&read_buf_);
    } else {
      arrived_ = true;
      hub_->push(arrival(std::nullopt));
    }
  }

  void read() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finish_requested_) return;
    }
    StartRead(&read_buf_);
  }

  // A message after the ones queued so far; dropped once the call is finishing or the client gone.
  void write(std::string bytes) {
    std::unique_lock<std::mutex> lock(mu_);
    if (finish_requested_ || broken_) return;
    if (writing_) {
      writes_.push_back(std::move(bytes));
      return;
    }
    writing_ = true;
    write_buf_ = to_buffer(bytes);
    lock.unlock();
    StartWrite(&write_buf_);
  }

  // The call's status, after the writes queued so far (and `last`, if given, sent with it), with
  // `trailing` metadata.
  void finish(int code, std::string details, std::optional<std::string> last, const Metadata& trailing = {}) {
    std::unique_lock<std::mutex> lock(mu_);
    if (finish_requested_) return;
    finish_requested_ = true;
    for (const auto& [key, value] : trailing) ctx_->AddTrailingMetadata(key, value);
    status_ = grpc::Status(static_cast<grpc::StatusCode>(code), std::move(details));
    if (broken_) last.reset();
    if (writing_) {
      if (last) writes_.push_back(std::move(*last));
      return;  // OnWriteDone finishes once the queue is empty
    }
    lock.unlock();
    if (last) {
      write_buf_ = to_buffer(*last);
      StartWriteAndFinish(&write_buf_, grpc::WriteOptions(), status_);
    } else {
      Finish(status_);
    }
  }

  void OnReadDone(bool ok) override {
    std::optional<std::string> payload;
    if (ok) payload = flatten(read_buf_);
    if (!arrived_) {
      arrived_ = true;
      hub_->push(arrival(std::move(payload)));
    } else if (ok) {
      hub_->push(Event{MESSAGE, id_, {}, -1, std::move(payload)});
    } else {
      hub_->push(Event{HALF_CLOSED, id_, {}, -1, std::nullopt});
    }
  }

  void OnWriteDone(bool ok) override {
    std::unique_lock<std::mutex> lock(mu_);
    writing_ = false;
    if (!ok) {  // the client is gone: nothing more can be sent
      broken_ = true;
      writes_.clear();
    }
    if (!writes_.empty()) {
      std::string next = std::move(writes_.front());
      writes_.pop_front();
      writing_ = true;
      bool last = finish_requested_ && writes_.empty();
      write_buf_ = to_buffer(next);
      lock.unlock();
      if (last) {
        StartWriteAndFinish(&write_buf_, grpc::WriteOptions(), status_);
      } else {
        StartWrite(&write_buf_);
      }
      return;
    }
    bool finish_now = finish_requested_;
    lock.unlock();
    if (finish_now) Finish(status_);
  }

  void OnCancel() override { hub_->push(Event{CANCELLED, id_, {}, -1, std::nullopt}); }
  void OnDone() override;

 private:
  Event arrival(std::optional<std::string> payload) {
    Event e{ARRIVED, id_, ctx_->method(), -1, std::move(payload)};
    const auto& metadata = ctx_->client_metadata();
    e.metadata.reserve(metadata.size());
    for (const auto& [key, value] : metadata) {
      e.metadata.emplace_back(std::string(key.data(), key.size()), std::string(value.data(), value.size()));
    }
    e.peer = ctx_->peer();
    auto deadline = ctx_->deadline();
    if (deadline != std::chrono::system_clock::time_point::max()) {
      e.timeout = std::chrono::duration<double>(deadline - std::chrono::system_clock::now()).count();
      if (e.timeout < 0) e.timeout = 0;
    }
    return e;
  }

  Server* server_;
  Hub* hub_;
  grpc::GenericCallbackServerContext* ctx_;
  uint64_t id_;
  bool read_first_;
  bool arrived_ = false;
  grpc::ByteBuffer read_buf_;
  std::mutex mu_;
  grpc::ByteBuffer write_buf_;
  std::deque<std::string> writes_;
  bool writing_ = false;
  bool broken_ = false;
  bool finish_requested_ = false;
  grpc::Status status_;
};

class Server final : public grpc::CallbackGenericService {
 public:
  // `tls`: (private key, certificate chain, client CA) in PEM, or none for plain text; a client CA
  // (not empty) makes it mutual TLS: clients must present a certificate it signed.
  // `channel_args`: integer channel arguments (connection age, keepalive), as grpcio takes them.
  Server(const std::string& address, int max_receive, int max_send, std::vector<std::string> streaming_requests,
         std::optional<std::tuple<std::string, std::string, std::string>> tls,
         std::vector<std::pair<std::string, int>> channel_args)
      : streaming_requests_(streaming_requests.begin(), streaming_requests.end()) {
    grpc::ServerBuilder builder;
    std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
    if (tls) {
      const auto& [key, chain, client_ca] = *tls;
      grpc::SslServerCredentialsOptions options(
          client_ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                            : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
      options.pem_root_certs = client_ca;
      options.pem_key_cert_pairs.push_back({key, chain});
      credentials = grpc::SslServerCredentials(options);
    }
    builder.AddListeningPort(address, credentials, &port_);
    builder.SetMaxReceiveMessageSize(max_receive);
    builder.SetMaxSendMessageSize(max_send);
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);  // a port in use is an error
    for (const auto& [name, value] : channel_args) builder.AddChannelArgument(name, value);
    builder.RegisterCallbackGenericService(this);
    server_ = builder.BuildAndStart();
    if (!server_ || port_ == 0) throw std::runtime_error("cannot listen on " + address);
  }

  ~Server() override {
    py::gil_scoped_release release;
    if (server_) {
      // Without an event loop left to answer them, calls still open are ended here: gRPC's
      // Shutdown waits for every call's Finish.
      std::vector<std::shared_ptr<Call>> open;
      {
        std::lock_guard<std::mutex> lock(mu_);
        for (auto& entry : calls_) open.push_back(entry.second);
      }
      for (auto& call : open) {
        call->finish(static_cast<int>(grpc::StatusCode::UNAVAILABLE), "the server stopped", std::nullopt);
      }
      server_->Shutdown(std::chrono::system_clock::now());
      server_.reset();
    }
    sender_.reset();
  }

  Sender& sender() { return *sender_; }

  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override {
    uint64_t id = next_id_++;
    auto call = std::make_shared<Call>(this, &hub_, ctx, id, !streaming_requests_.count(ctx->method()));
    {
      std::lock_guard<std::mutex> lock(mu_);
      calls_.emplace(id, call);
    }
    call->begin();
    return call.get();
  }

  void forget(uint64_t id) {
    std::shared_ptr<Call> last;  // destroyed after the lock is released
    std::lock_guard<std::mutex> lock(mu_);
    auto it = calls_.find(id);
    if (it != calls_.end()) {
      last = std::move(it->second);
      calls_.erase(it);
    }
  }

  std::shared_ptr<Call> find(uint64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = calls_.find(id);
    return it == calls_.end() ? nullptr : it->second;
  }

  int port() const { return port_; }
  int fd() const { return hub_.fd(); }
  Hub& hub() { return hub_; }

  // Refuse new calls; calls in flight get `grace` seconds, then are cancelled. Blocks until every
  // call has ended, so the event loop must keep answering meanwhile (call it from another thread).
  void shutdown(double grace) {
    if (!server_) return;
    {
      py::gil_scoped_release release;
      auto deadline = std::chrono::system_clock::now() +
                      std::chrono::duration_cast<std::chrono::system_clock::duration>(std::chrono::duration<double>(grace));
      server_->Shutdown(deadline);
    }
  }

 private:
  Hub hub_;
  std::unique_ptr<Sender> sender_ = std::make_unique<Sender>();
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::unordered_set<std::string> streaming_requests_;
  std::atomic<uint64_t> next_id_{1};
  std::mutex mu_;
  std::unordered_map<uint64_t, std::shared_ptr<Call>> calls_;
};

void Call::OnDone() {
  hub_->push(Event{DONE, id_, {}, -1, std::nullopt});
  server_->forget(id_);  // may destroy this call: nothing after it
}

py::list take_events(Server& server) {
  std::vector<Event> events = server.hub().take();
  py::list out(events.size());
  size_t i = 0;
  for (auto& e : events) {
    py::object payload = e.payload ? py::object(py::bytes(*e.payload)) : py::none();
    if (e.kind == ARRIVED) {
      py::object timeout = e.timeout < 0 ? py::none() : py::object(py::float_(e.timeout));
      py::tuple metadata(e.metadata.size());
      size_t j = 0;
      for (const auto& [key, value] : e.metadata) {
        bool binary = key.size() > 4 && key.compare(key.size() - 4, 4, "-bin") == 0;
        py::object v = binary ? py::object(py::bytes(value)) : py::object(py::str(value));
        metadata[j++] = py::make_tuple(py::str(key), v);
      }
      out[i++] = py::make_tuple(static_cast<int>(e.kind), e.call, py::str(e.method), timeout, payload, metadata,
                                py::str(e.peer));
    } else {
      out[i++] = py::make_tuple(static_cast<int>(e.kind), e.call, py::none(), py::none(), payload);
    }
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_frontend, m) {
  m.doc() = "genserve's compiled gRPC transport (see native.py)";
  m.attr("ARRIVED") = static_cast<int>(ARRIVED);
  m.attr("MESSAGE") = static_cast<int>(MESSAGE);
  m.attr("HALF_CLOSED") = static_cast<int>(HALF_CLOSED);
  m.attr("CANCELLED") = static_cast<int>(CANCELLED);
  m.attr("DONE") = static_cast<int>(DONE);
  m.attr("GRPC_VERSION") = grpc::Version();
  py::class_<Server>(m, "Server")
      .def(py::init<const std::string&, int, int, std::vector<std::string>,
                    std::optional<std::tuple<std::string, std::string, std::string>>,
                    std::vector<std::pair<std::string, int>>>(),
           py::arg("address"), py::arg("max_receive"), py::arg("max_send"), py::arg("streaming_requests"),
           py::arg("tls"), py::arg("channel_args"))
      .def_property_readonly("port", &Server::port)
      .def_property_readonly("fd", &Server::fd)
      .def("take_events", &take_events)
      .def("read",
           [](Server& s, uint64_t id) {
             auto call = s.find(id);
             if (call) call->read();
             return static_cast<bool>(call);
           })
      .def("write",
           [](Server& s, uint64_t id, py::bytes data) {
             auto call = s.find(id);
             if (!call) return false;
             s.sender().post([call, bytes = std::string(data)]() mutable { call->write(std::move(bytes)); });
             return true;
           })
      .def("finish_all",
           [](Server& s, const py::list& ends) {
             // (call, code, details, last, trailing) for each call ended in one turn of the event loop:
             // one crossing and at most one wake-up of the sender for all of them.
             std::vector<std::function<void()>> ops;
             ops.reserve(ends.size());
             for (const auto& item : ends) {
               auto end = item.cast<py::tuple>();
               auto call = s.find(end[0].cast<uint64_t>());
               if (!call) continue;
               int code = end[1].cast<int>();
               std::string details = end[2].cast<std::string>();
               std::optional<std::string> bytes;
               if (!end[3].is_none()) bytes = std::string(end[3].cast<py::bytes>());
               Metadata trailing;
               if (!end[4].is_none()) trailing = end[4].cast<Metadata>();
               ops.push_back([call, code, details = std::move(details), bytes = std::move(bytes),
                              trailing = std::move(trailing)]() mutable {
                 call->finish(code, std::move(details), std::move(bytes), trailing);
               });
             }
             s.sender().post_all(ops);
           })
      .def("shutdown", &Server::shutdown, py::arg("grace"));
}
