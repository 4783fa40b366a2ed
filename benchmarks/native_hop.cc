// The cheapest compiled gRPC hop: a byte-forwarding proxy with no routing, in C++.
//
// benchmarks/serving_latency.py --native-hop BINARY runs it beside the Python hops
// (grpc_hop_floor.py): what any compiled data plane in front of the model server (Envoy,
// or the router's data plane, serving/native/router_data_plane.cc) could cost at best on
// this host. gRPC's completion-queue API with one event thread polling one queue for the
// server side and the backend calls, as the router's data plane does: gRPC's callback API
// took a third more CPU per request here, most of it switching between its threads. It passes
// the client's x-request-id on, as the router does.
//
// Build (Debian: apt-get install libgrpc++-dev pkg-config):
//   g++ -O2 -std=c++17 benchmarks/native_hop.cc -o native_hop $(pkg-config --cflags --libs grpc++)
//   native_hop PORT BACKEND
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <chrono>
#include <iostream>
#include <memory>
#include <string>

namespace {

grpc::AsyncGenericService g_service;

// One call: requested -> read -> backend -> finished, one step outstanding at a time (its tag).
class ForwardCall {
 public:
  ForwardCall(grpc::ServerCompletionQueue* queue, grpc::GenericStub* stub) : queue_(queue), stub_(stub) {
    g_service.RequestCall(&server_context_, &stream_, queue_, queue_, this);
  }
  void Proceed(bool ok) {
    switch (step_) {
      case kRequested:
        if (!ok) break;
        new ForwardCall(queue_, stub_);  // the next client's call
        step_ = kRead;
        stream_.Read(&request_, this);
        return;
      case kRead:
        if (!ok) return Finish(grpc::Status(grpc::StatusCode::INTERNAL, "no request message"));
        step_ = kBackend;
        client_context_.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
        for (const auto& [key, value] : server_context_.client_metadata()) {
          if (key == "x-request-id") client_context_.AddMetadata("x-request-id", std::string(value.data(), value.size()));
        }
        backend_ = stub_->PrepareUnaryCall(&client_context_, server_context_.method(), request_, queue_);
        backend_->StartCall();
        backend_->Finish(&response_, &status_, this);
        return;
      case kBackend:
        if (!status_.ok()) return Finish(status_);
        step_ = kFinished;
        stream_.WriteAndFinish(response_, grpc::WriteOptions(), grpc::Status::OK, this);
        return;
      case kFinished:
        break;
    }
    delete this;
  }

 private:
  enum Step { kRequested, kRead, kBackend, kFinished };
  void Finish(const grpc::Status& status) {
    step_ = kFinished;
    stream_.Finish(status, this);
  }
  grpc::ServerCompletionQueue* queue_;
  grpc::GenericStub* stub_;
  grpc::GenericServerContext server_context_;
  grpc::GenericServerAsyncReaderWriter stream_{&server_context_};
  grpc::ClientContext client_context_;
  std::unique_ptr<grpc::GenericClientAsyncResponseReader> backend_;
  grpc::Status status_;
  grpc::ByteBuffer request_, response_;
  Step step_ = kRequested;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: native_hop PORT BACKEND\n";
    return 2;
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  grpc::GenericStub stub(grpc::CreateCustomChannel(argv[2], grpc::InsecureChannelCredentials(), args));
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(std::string("127.0.0.1:") + argv[1], grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(-1);
  builder.RegisterAsyncGenericService(&g_service);
  std::unique_ptr<grpc::ServerCompletionQueue> queue = builder.AddCompletionQueue();
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server) return 1;
  for (int i = 0; i < 32; ++i) new ForwardCall(queue.get(), &stub);
  std::cout << "native hop listening on port " << port << std::endl;
  void* tag;
  bool ok;
  while (queue->Next(&tag, &ok)) static_cast<ForwardCall*>(tag)->Proceed(ok);  // runs until killed
  return 0;
}
